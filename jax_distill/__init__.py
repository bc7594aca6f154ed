"""jax_distill: two-stage SFT distillation of Qwen2.5 students in JAX (O1 Replication Journey, part 2)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_pretrained", "save_pretrained", "generate", "init_model", "ModelConfig", "__version__"]


def __getattr__(name: str):
    # Lazy: `import jax_distill` (e.g. for the CLI's --help) must not pull in jax.
    if name in ("load_pretrained", "save_pretrained"):
        from jax_distill.model import hf_io

        return getattr(hf_io, name)
    if name == "generate":
        from jax_distill.sample.sampler import generate

        return generate
    if name == "init_model":
        from jax_distill.model.qwen2 import init_model

        return init_model
    if name == "ModelConfig":
        from jax_distill.model.config import ModelConfig

        return ModelConfig
    raise AttributeError(name)
