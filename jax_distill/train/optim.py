"""AdamW with warmup + decay and global-norm clipping, as optax transforms."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jax_distill.train.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` over ``warmup_steps``, then cosine/linear decay to ``min_lr_ratio`` x lr."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warm = max(0, min(cfg.warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warm)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, floor, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
    if warm == 0:
        return decay
    # Warmup starts at lr/warm (not 0) so that step 0 already moves the weights.
    return optax.join_schedules([optax.linear_schedule(peak / warm, peak, warm - 1 or 1), decay], [warm])


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: matrices and embeddings; not norms or biases."""

    def keep(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name.endswith("norm") or name.endswith("bias"))

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule), decay masked off norms and biases."""
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
