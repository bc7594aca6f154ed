"""An open teacher: a local checkpoint sampled by our continuous-batching engine (`sample/engine.py`), so a TPU
slice or a GPU host produces traces with no API at all. Same interface as `teacher.APITeacher`."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from jax_distill.data.tokenize import Tokenizer
from jax_distill.distill.teacher import Completion, Request
from jax_distill.sample.engine import Engine


def request_seed(seed: int, req: Request) -> int:
    """Per-sample seed from the prompt and the sample index, not from the position in a run: a resumed run or a
    different shard size draws the same samples."""
    return (seed * 1_000_003 + zlib.crc32(json.dumps(req.messages).encode()) * 64 + req.index) % 2**31


class EngineTeacher:
    """``model`` (a `Qwen2ForCausalLM`, on ``mesh`` when given) behind the chat template of ``tok``; ``temperature``
    0 = greedy; ``mesh``/``rules``: a decode mesh (`sharding.decode_mesh`). Token usage
    is counted from the ids (prompt + generated); there is no price, ``seconds`` is the engine time."""

    def __init__(self, model: Any, tok: Tokenizer, *, name: str, max_tokens: int, temperature: float = 0.6,
                 top_p: float = 0.95, seed: int = 0, slots: int = 64, chunk_steps: int = 64, compact: bool = True,
                 mesh: Any = None, rules: Any = None):
        self.engine = Engine(model, slots=slots, chunk_steps=chunk_steps, compact=compact, mesh=mesh, rules=rules)
        self.tok, self.max_tokens, self.temperature, self.top_p, self.seed = tok, max_tokens, temperature, top_p, seed
        self.cache_id = f"open:{name}:t{temperature}:p{top_p}:m{max_tokens}:s{seed}"
        self.seconds = 0.0
        self.generated_tokens = 0

    def complete(self, requests: Sequence[Request],
                 on_done: Callable[[int, Completion], None] | None = None) -> list[Completion | BaseException]:
        prompts = [self.tok.encode_chat([{"role": r, "content": c} for r, c in req.messages],
                                        add_generation_prompt=True)[0] for req in requests]
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                    seed=[request_seed(self.seed, r) for r in requests],
                                    stop_ids=self.tok.stop_ids, pad_id=self.tok.pad_id)
        self.seconds += time.perf_counter() - t0
        results: list[Completion | BaseException] = []
        for i, (p, ids) in enumerate(zip(prompts, outs)):
            self.generated_tokens += len(ids)
            # The stop token is excluded from `ids`: a full budget means the sample never stopped.
            c = Completion(self.tok.decode(ids), None, "length" if len(ids) >= self.max_tokens else "stop",
                           len(p), len(ids), 0)
            if on_done:
                on_done(i, c)
            results.append(c)
        return results
