"""Tokenizers (the real Qwen2.5 vocabulary from a .tiktoken file, or any Hugging Face tokenizer) and the Qwen2.5
chat format with assistant-only loss masks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from jax_distill.data.sources import sha256_file

# Qwen2's pre-tokenisation pattern (digits split one by one).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
# Their ids in the real Qwen2.5 vocabulary (151,643 BPE ranks, specials after them); a Hugging Face tokenizer's own
# vocabulary is read instead where one is given.
QWEN_SPECIAL_IDS = {tok: 151643 + i for i, tok in enumerate(QWEN_SPECIALS)}
# Qwen2.5's chat template adds this system turn when the conversation has none.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class Tokenizer:
    """Text <-> ids plus the chat format. ``eos_id`` is <|im_end|> (ends an assistant turn), ``pad_id`` <|endoftext|>."""

    backend: Any
    encode_fn: Any
    decode_fn: Any
    vocab_size: int
    im_start_id: int
    eos_id: int
    pad_id: int
    sha256: str
    spec: str
    default_system: str | None = QWEN_DEFAULT_SYSTEM

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_id, self.pad_id]

    def encode(self, text: str) -> list[int]:
        """Plain text (special-token strings in it are encoded as ordinary text, never as control tokens)."""
        return self.encode_fn(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_fn([int(i) for i in ids])

    def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False,
                    loss_on: str = "assistant") -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 loss mask for a conversation in the Qwen2.5 chat format:
        ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn, a default system turn first when none is given.
        The mask is 1 on assistant content and its closing <|im_end|> (``loss_on="all"``: every token)."""
        msgs = list(messages)
        if (not msgs or msgs[0].get("role") != "system") and self.default_system is not None:
            msgs = [{"role": "system", "content": self.default_system}] + msgs
        nl = self.encode("\n")
        ids: list[int] = []
        mask: list[int] = []
        for m in msgs:
            role, content = m["role"], m["content"]
            head = [self.im_start_id] + self.encode(f"{role}\n")
            body = self.encode(content) + [self.eos_id]
            learn = 1 if (loss_on == "all" or role == "assistant") else 0
            ids += head + body + nl
            mask += [1 if loss_on == "all" else 0] * len(head) + [learn] * len(body) + \
                [1 if loss_on == "all" else 0] * len(nl)
        if add_generation_prompt:
            head = [self.im_start_id] + self.encode("assistant\n")
            ids += head
            mask += [0] * len(head)
        return ids, mask

    def save(self, directory: str | Path) -> None:
        """Write a Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json with a chat template that
        renders exactly what :meth:`encode_chat` encodes), so ``AutoTokenizer.from_pretrained(directory)``, vLLM and
        :func:`load_tokenizer` read it back. A .tiktoken vocabulary is converted (Qwen's specials appended)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        hf = self.backend if hasattr(self.backend, "save_pretrained") else _tiktoken_to_hf(self.spec)
        hf.chat_template = chat_template(self.default_system)
        hf.save_pretrained(str(out))
        if self.default_system != QWEN_DEFAULT_SYSTEM:
            (out / "jax_distill_tokenizer.json").write_text(json.dumps({"default_system": self.default_system}))

    def generation_config(self) -> dict[str, Any]:
        """``generation_config.json`` for an exported model: stop on <|im_end|> or <|endoftext|>, greedy (the
        defaults of ``jax-distill eval``), so transformers/vLLM users sample what our evaluation samples."""
        return {"bos_token_id": self.pad_id, "eos_token_id": self.stop_ids, "pad_token_id": self.pad_id,
                "do_sample": False}


def chat_template(default_system: str | None) -> str:
    """The Qwen2.5 chat format as a Jinja template (no tools): the same token stream as :meth:`Tokenizer.encode_chat`,
    including the default system turn added when a conversation has none."""
    default = ("{{- '<|im_start|>system\\n' + " + json.dumps(default_system) + " + '<|im_end|>\\n' }}"
               if default_system is not None else "")
    return ("{%- if messages and messages[0]['role'] == 'system' %}"
            "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
            "{%- else %}" + default + "{%- endif %}"
            "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- endif %}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def _tiktoken_to_hf(path: str):
    """A .tiktoken vocabulary as a transformers fast tokenizer with the same ids (Qwen's specials after the ranks)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(path, pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIALS).converted()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[t for t in QWEN_SPECIALS
                                                              if t not in ("<|im_end|>", "<|endoftext|>")])


def _from_tiktoken(path: Path) -> Tokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    n = len(ranks)
    specials = {tok: n + i for i, tok in enumerate(QWEN_SPECIALS)}
    enc = tiktoken.Encoding(name=f"qwen:{path.name}", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                            special_tokens=specials)

    def encode(text: str) -> list[int]:
        return enc.encode(text, allowed_special=set(), disallowed_special=())

    def decode(ids: Sequence[int]) -> str:
        return enc.decode(list(ids), errors="replace")

    return Tokenizer(enc, encode, decode, n + len(QWEN_SPECIALS), specials["<|im_start|>"], specials["<|im_end|>"],
                     specials["<|endoftext|>"], sha256_file(str(path)), str(path))


def _from_hf(spec: str) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec)
    vocab = tok.get_vocab()
    missing = [t for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>") if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer {spec}: lacks the Qwen chat special tokens {missing}")

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=False)

    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
    local = Path(spec)
    system = QWEN_DEFAULT_SYSTEM
    if local.is_dir() and (local / "jax_distill_tokenizer.json").is_file():
        system = json.loads((local / "jax_distill_tokenizer.json").read_text()).get("default_system", system)
    return Tokenizer(tok, encode, decode, len(vocab), vocab["<|im_start|>"], vocab["<|im_end|>"],
                     vocab["<|endoftext|>"], digest, spec, system)


def _from_remote(spec: str) -> Tokenizer:
    """A tokenizer in a gs:// folder (a model export) or a gs:// .tiktoken file: its small files are copied to a
    local temporary folder (never the weights next to them)."""
    import tempfile

    from jax_distill.paths import as_path, copy_file

    src = as_path(spec)
    local = Path(tempfile.mkdtemp(prefix="jax_distill_tokenizer_"))
    if spec.endswith(".tiktoken"):
        if not src.exists():
            raise FileNotFoundError(f"tokenizer file not found: {spec}")
        copy_file(src, local / src.name)
        tok = _from_tiktoken(local / src.name)
    else:
        files = [f for f in src.iterdir() if not f.name.endswith((".safetensors", ".bin", ".pt"))
                 and not f.is_dir()] if src.exists() else []
        if not any(f.name == "tokenizer_config.json" for f in files):
            raise FileNotFoundError(f"tokenizer not found: {spec} (no tokenizer_config.json there)")
        for f in files:
            copy_file(f, local / f.name)
        tok = _from_hf(str(local))
    tok.spec = spec
    return tok


def load_tokenizer(spec: str) -> Tokenizer:
    """A ``.tiktoken`` vocabulary file (Qwen's specials appended), a local HF tokenizer directory, or a hub name."""
    if not spec:
        raise ValueError("no tokenizer given: set data.tokenizer to a .tiktoken file, a tokenizer dir or a hub name")
    if "://" in spec:
        return _from_remote(spec)
    p = Path(spec)
    if p.suffix == ".tiktoken":
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {spec}")
        return _from_tiktoken(p)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{spec}: a tokenizer is a .tiktoken file or a directory")
    if not p.exists() and (p.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1
                           or "\\" in spec or p.suffix in (".json", ".model")):
        # A path, not a hub name (owner/name): say so instead of the hub's "Repo id must be in the form ...".
        raise FileNotFoundError(f"tokenizer not found: {spec} (a .tiktoken file, a tokenizer dir, or a hub name "
                                "owner/name)")
    return _from_hf(spec)
