"""Qwen2 model configuration: the architecture (Hugging Face `Qwen2Config` names) plus how we execute it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jax_distill.data.tokenize import QWEN_SPECIAL_IDS
from jax_distill.model.presets import PRESETS, preset_key

DType = Literal["float32", "bfloat16", "float16"]
# What to recompute in the backward pass. "none": keep all activations; "full": keep only each layer's input;
# "dots": keep matmul outputs without batch dims (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
Remat = Literal["none", "full", "dots"]
# See model/attention.py. "splash": TPU (Pallas kernel, the recommended TPU setting); "cudnn": GPU (cuDNN flash
# attention with packed-row offsets; bf16/fp16); "chunked": block-causal flash attention in plain JAX (CPU, any
# backend); "xla": dense reference; "dot_product": jax.nn.dot_product_attention with a dense mask.
Attention = Literal["xla", "chunked", "splash", "cudnn", "dot_product"]

ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "max_position_embeddings",
)


class UnsupportedConfigError(ValueError):
    """A Hugging Face config asks for a feature this port does not implement (never silently run a different model)."""


@dataclass(frozen=True)
class ModelConfig:
    """A Qwen2 model. Architecture fields left None are filled from ``preset`` by :meth:`resolve`.

    In YAML: ``model: {preset: qwen2.5-math-7b, dtype: bfloat16, remat: full}``, or explicit architecture fields, or
    ``weights: path/to/hf_dir`` (architecture then comes from its config.json).
    """

    preset: str | None = None
    weights: str | None = None  # Hugging Face directory (or Orbax checkpoint) to initialise from; None = random init
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None  # None = hidden_size // num_attention_heads (as transformers)
    rope_theta: float | None = None
    rms_norm_eps: float | None = None
    tie_word_embeddings: bool | None = None
    max_position_embeddings: int | None = None
    # Execution policy.
    dtype: DType = "float32"  # activations / matmul compute
    param_dtype: DType = "float32"  # master weights
    remat: Remat = "none"
    # None (auto): layers scanned, except on CPU, where XLA's stacked per-layer residuals of a scanned step cost
    # ~10% of a bench-small step at 4096 tokens; an unrolled 80-layer model would compile slowly on accelerators.
    scan_layers: bool | None = None
    attention: Attention = "dot_product"
    max_segments: int = 16  # attention "cudnn": most documents (+1 for trailing padding) in one packed row
    init_std: float = 0.02  # transformers' initializer_range, for random init

    def layers_scanned(self, platform: str | None = None) -> bool:
        """Whether the decoder layers run under `jax.lax.scan`: ``scan_layers``, or when it is None, everywhere but
        on CPU. ``platform``: of the devices the model will run on (default: JAX's default backend)."""
        if self.scan_layers is not None:
            return self.scan_layers
        import jax

        return (platform or jax.default_backend()) != "cpu"

    def resolve(self) -> ModelConfig:
        """Fill architecture fields from ``preset`` (or ``weights``' config.json) and check the result is complete."""
        cfg = self
        base: dict[str, Any] = {}
        if cfg.preset is not None:
            base = dict(PRESETS[_known_preset(cfg.preset)])
        elif cfg.weights is not None and (Path(cfg.weights) / "config.json").is_file():
            base = {k: getattr(from_hf_config(Path(cfg.weights) / "config.json"), k) for k in ARCH_FIELDS}
        filled = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else base.get(k)) for k in ARCH_FIELDS}
        if filled["head_dim"] is None and filled["hidden_size"] and filled["num_attention_heads"]:
            filled["head_dim"] = filled["hidden_size"] // filled["num_attention_heads"]
        cfg = dataclasses.replace(cfg, **filled)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check what is set (a partial config is fine until :meth:`resolve`)."""
        if self.preset is not None:
            _known_preset(self.preset)
        h, kv = self.num_attention_heads, self.num_key_value_heads
        if h is not None and kv is not None and h % kv:
            raise ValueError(f"num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})")
        if self.head_dim is not None and self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")

    @property
    def is_resolved(self) -> bool:
        return all(getattr(self, k) is not None for k in ARCH_FIELDS)

    def param_count(self) -> int:
        """Number of parameters, as transformers' Qwen2ForCausalLM counts them (tied head counted once)."""
        c = self.resolve() if not self.is_resolved else self
        d, hd = c.hidden_size, c.head_dim
        q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
        attn = d * q + q + 2 * (d * kv + kv) + q * d
        mlp = 3 * d * c.intermediate_size
        layer = attn + mlp + 2 * d
        embed = c.vocab_size * d
        head = 0 if c.tie_word_embeddings else c.vocab_size * d
        return embed + c.num_hidden_layers * layer + d + head

    def to_hf_config(self) -> dict[str, Any]:
        """The config.json transformers needs to rebuild this architecture as Qwen2ForCausalLM."""
        c = self.resolve() if not self.is_resolved else self
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_norm_eps,
            "tie_word_embeddings": c.tie_word_embeddings,
            "max_position_embeddings": c.max_position_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": c.num_hidden_layers,
            "attention_dropout": 0.0,
            "initializer_range": c.init_std,
            "bos_token_id": QWEN_SPECIAL_IDS["<|endoftext|>"],
            "eos_token_id": QWEN_SPECIAL_IDS["<|endoftext|>"],
            "torch_dtype": "float32" if c.param_dtype == "float32" else c.param_dtype,
            "use_cache": True,
        }


def _known_preset(name: str) -> str:
    key = preset_key(name)
    if key is None:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return key


def get_preset(name: str, **execution: Any) -> ModelConfig:
    """The resolved config of a named preset (see model/presets.py); ``execution`` sets dtype, remat, ..."""
    return ModelConfig(**PRESETS[_known_preset(name)], **execution)


def from_hf_config(source: str | Path | dict[str, Any], **execution: Any) -> ModelConfig:
    """Read a Hugging Face Qwen2 ``config.json`` (path or dict); refuse features we do not implement.

    ``execution`` sets dtype/param_dtype/remat/scan_layers/attention.
    """
    where = "config"
    if not isinstance(source, dict):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {where}") from None
    hf = source
    model_type = hf.get("model_type")
    if model_type not in ("qwen2", None):
        raise UnsupportedConfigError(f"{where}: model_type {model_type!r} is not Qwen2")
    if hf.get("use_sliding_window"):
        raise UnsupportedConfigError(
            f"{where}: use_sliding_window=true (sliding_window={hf.get('sliding_window')}) is not implemented"
        )
    rope_scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default")) if rope_scaling else "default"
    if rope_type not in ("default", None):
        raise UnsupportedConfigError(f"{where}: rope_scaling {rope_scaling!r} is not implemented (only default RoPE)")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedConfigError(f"{where}: hidden_act {hf['hidden_act']!r} is not implemented (only silu)")
    rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope_theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        init_std=float(hf.get("initializer_range", 0.02)),
        **execution,
    ).resolve()
