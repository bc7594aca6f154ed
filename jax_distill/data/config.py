"""Data configuration for one SFT stage's traces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    """Where the traces are, how to read, tokenize, mask and pack them.

    ``paths``: local files, globs, ``gs://`` URIs or any fsspec URL (JSON lines or Parquet).
    """

    paths: list[str] = field(default_factory=list)
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    # Field names (the first one present is used): problem/prompt text, response (the long CoT), optional answer.
    prompt_fields: list[str] = field(default_factory=lambda: ["problem", "prompt", "question"])
    response_fields: list[str] = field(default_factory=lambda: ["response", "completion", "solution"])
    answer_field: str = "answer"
    messages_field: str = "messages"  # chat form: [{"role", "content"}, ...]
    tokenizer: str = ""  # .tiktoken file, local HF tokenizer dir, or hub name
    seq_len: int = 2048
    system_prompt: str | None = None  # None = Qwen2.5's default system turn
    prompt_template: str = "{problem}"  # user turn built from the problem text
    loss_on: Literal["assistant", "all"] = "assistant"
    overlong: Literal["truncate", "drop"] = "truncate"
    require_boxed: bool = False  # drop (and count) responses without a \boxed{} answer
    # best_fit_decreasing: ours, windowed (data/packing.py), ~97.5% at 16k; first_fit/best_fit: grain's online packers
    packing: Literal["best_fit_decreasing", "first_fit", "best_fit", "none"] = "best_fit_decreasing"
    packing_window: int = 512  # documents per best_fit_decreasing window (memory: window x mean document)
    packing_bins: int = 0  # first_fit/best_fit: rows the packer keeps open at once; 0 = the batch size
    shuffle: bool = True
    num_epochs: int | None = None  # None = repeat forever
    worker_count: int = 0  # grain worker processes for the packing/batching stage (0 = in-process)
    strict: bool = False  # raise on the first bad record (naming file, line and field) instead of counting it

    def validate(self) -> None:
        if self.seq_len < 8:
            raise ValueError(f"seq_len {self.seq_len} is too small (at least 8)")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError("num_epochs must be >= 1 or null (repeat forever)")
        if self.packing_window < 1:
            raise ValueError(f"packing_window must be >= 1, got {self.packing_window}")
