"""Named Qwen2.5 sizes: architecture fields only (Hugging Face ``config.json`` names), as each model publishes them.

Plain data, so that the config schema (model/config.py), the benchmarks and the tests read one table.
"""

from __future__ import annotations

from typing import Any


def _qwen(hidden, inter, layers, heads, kv, vocab, tied, theta=1e6, eps=1e-6, max_pos=32768) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads, rope_theta=theta,
                rms_norm_eps=eps, tie_word_embeddings=tied, max_position_embeddings=max_pos)


PRESETS: dict[str, dict[str, Any]] = {
    # Qwen2.5 base models.
    "qwen2.5-0.5b": _qwen(896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": _qwen(1536, 8960, 28, 12, 2, 151936, True, max_pos=131072),
    "qwen2.5-3b": _qwen(2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": _qwen(3584, 18944, 28, 28, 4, 152064, False, max_pos=131072),
    "qwen2.5-14b": _qwen(5120, 13824, 48, 40, 8, 152064, False, eps=1e-5, max_pos=131072),
    "qwen2.5-32b": _qwen(5120, 27648, 64, 40, 8, 152064, False, eps=1e-5, max_pos=131072),
    "qwen2.5-72b": _qwen(8192, 29568, 80, 64, 8, 152064, False, eps=1e-5, max_pos=131072),
    # Qwen2.5-Math: same shapes, rope_theta 1e4 and a 4k native context.
    "qwen2.5-math-1.5b": _qwen(1536, 8960, 28, 12, 2, 151936, True, theta=1e4, max_pos=4096),
    "qwen2.5-math-7b": _qwen(3584, 18944, 28, 28, 4, 152064, False, theta=1e4, max_pos=4096),
    "qwen2.5-math-72b": _qwen(8192, 29568, 80, 64, 8, 152064, False, theta=1e4, eps=1e-5, max_pos=4096),
    # Small shapes for tests, benchmarks (../shared/bench/README.md) and the CPU demo (not published models).
    "bench-small": _qwen(512, 1408, 8, 8, 2, 8192, True, max_pos=4096),
    "tiny": _qwen(64, 176, 2, 4, 2, 512, True, max_pos=2048),
}


def preset_key(name: str) -> str | None:
    """The PRESETS key for ``name`` (case-insensitive; "Qwen/Qwen2.5-7B-Instruct" style hub names accepted), or None."""
    key = name.lower().split("/")[-1].removesuffix("-instruct")
    return key if key in PRESETS else None
