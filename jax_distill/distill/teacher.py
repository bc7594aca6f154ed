"""Teachers behind one interface, and the on-disk response cache.

`APITeacher`: any OpenAI-compatible ``/v1/chat/completions`` endpoint through the `openai` client, whose own retry
loop (429, 5xx, timeouts, dropped connections; exponential backoff with jitter, ``Retry-After`` honoured) we use
and count (``retries_taken``). A separate reasoning field (``reasoning_content``: DeepSeek-R1, QwQ under vLLM/SGLang)
is kept apart from the answer. Every finished response is appended to a `ResponseCache` before it is graded, so a
crash or a rerun never pays for a sample twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml


@dataclass
class Completion:
    """One teacher sample: the visible answer, the separate reasoning (if the API returned one), why it stopped
    (``stop`` | ``length`` | ...) and the tokens billed (completion includes reasoning tokens)."""

    text: str
    reasoning: str | None = None
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Request:
    """Sample ``index`` of one problem's prompt (chat messages)."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    index: int


class Teacher(Protocol):
    cache_id: str  # changes whenever the teacher's outputs would (model, sampling parameters)

    def complete(self, requests: Sequence[Request],
                 on_done: Callable[[int, Completion], None] | None = None) -> list[Completion | BaseException]:
        """One result per request, in order; a failure (after retries) is returned, not raised. ``on_done(i, c)``
        as soon as request i has its completion (the caller caches it before anything else can fail)."""
        ...


class TeacherError(RuntimeError):
    """A request that failed for good (after the client's retries), or a response that is not a chat completion."""


def teacher_price(model: str, prices_file: str | Path | None) -> tuple[float, float, str] | None:
    """(USD per 1M input tokens, per 1M output tokens, source) of ``model`` in the prices file's ``teachers:``."""
    if prices_file is None or not Path(prices_file).is_file():
        return None
    rows = (yaml.safe_load(Path(prices_file).read_text()) or {}).get("teachers") or {}
    row = rows.get(model)
    if not row:
        return None
    return float(row["input"]), float(row["output"]), f"{prices_file}: teachers.{model}"


class ResponseCache:
    """Append-only JSONL of finished completions keyed by (teacher, messages, sample index). A torn last line (a
    process killed mid-write) is ignored. Local files only: an object store cannot append."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, Completion] = {}
        self.torn_lines = 0
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    key = e.pop("key")
                    self.entries[key] = Completion(**e)
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1
        self._lock = threading.Lock()

    @staticmethod
    def key(cache_id: str, req: Request) -> str:
        return hashlib.sha256(json.dumps([cache_id, req.messages, req.index]).encode()).hexdigest()

    def get(self, key: str) -> Completion | None:
        return self.entries.get(key)

    def put(self, key: str, c: Completion) -> None:
        with self._lock:
            self.entries[key] = c
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, **asdict(c)}, ensure_ascii=False) + "\n")


class APITeacher:
    """An OpenAI-compatible chat endpoint. ``concurrency`` requests in flight at most (a thread pool: the client is
    thread-safe); ``retries`` counts the client's retries over this teacher's life. ``seed``: sample k is requested
    with ``seed + k`` (vLLM/SGLang honour per-request seeds; None sends none)."""

    def __init__(self, model: str, *, endpoint: str | None = None, api_key: str | None = None,
                 temperature: float | None = None, top_p: float | None = None, max_tokens: int = 32768,
                 concurrency: int = 16, max_retries: int = 6, timeout: float = 600.0, seed: int | None = 0,
                 max_tokens_field: str = "max_completion_tokens"):
        import openai

        self.model, self.temperature, self.top_p, self.max_tokens = model, temperature, top_p, max_tokens
        self.max_tokens_field = max_tokens_field
        self.concurrency = concurrency
        self.seed = seed
        self.cache_id = f"api:{model}:t{temperature}:p{top_p}:m{max_tokens}:s{seed}"
        self.retries = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._client = openai.OpenAI(base_url=endpoint, api_key=api_key or "unused", max_retries=max_retries,
                                     timeout=timeout)

    def _one(self, req: Request) -> Completion:
        kw: dict[str, Any] = {self.max_tokens_field: self.max_tokens}
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        if self.top_p is not None:
            kw["top_p"] = self.top_p
        if self.seed is not None:  # sample k of every problem asks for seed + k: reproducible where the server is
            kw["seed"] = self.seed + req.index
        raw = self._client.chat.completions.with_raw_response.create(
            model=self.model, messages=[{"role": r, "content": c} for r, c in req.messages], **kw)
        with self._lock:
            self.requests += 1
            self.retries += raw.retries_taken
        try:
            resp = raw.parse()
            choice = resp.choices[0]
        except Exception as err:  # noqa: BLE001 - a 200 whose body is not a chat completion
            raise TeacherError(f"malformed response: {type(err).__name__}: {err}") from None
        msg = choice.message
        reasoning = getattr(msg, "reasoning_content", None) or (msg.model_extra or {}).get("reasoning_content")
        usage = resp.usage
        details = getattr(usage, "completion_tokens_details", None)
        return Completion(text=msg.content or "", reasoning=reasoning or None, finish_reason=choice.finish_reason,
                          prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                          reasoning_tokens=getattr(details, "reasoning_tokens", 0) or 0)

    def complete(self, requests: Sequence[Request],
                 on_done: Callable[[int, Completion], None] | None = None) -> list[Completion | BaseException]:
        from concurrent.futures import ThreadPoolExecutor

        def safe(i: int) -> Completion | BaseException:
            try:
                c = self._one(requests[i])
            except Exception as err:  # noqa: BLE001 - after the client's retries: reported per sample
                return err
            if on_done:
                on_done(i, c)
            return c

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(safe, range(len(requests))))
