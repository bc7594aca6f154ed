"""Qwen2 / Qwen2.5 decoder in Flax NNX, numerically equal to transformers' `Qwen2ForCausalLM`.

The module holds parameters only; the math is pure functions (`rms_norm`, `rope`, `decoder_layer`). Decoder layers
are stored stacked along a leading ``layers`` axis and run under `jax.lax.scan`, so an 80-layer model compiles in about
the time of one layer. Every parameter carries logical axis names (``axes`` metadata) that `jax_distill.sharding` maps
onto mesh axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jax_distill.model.attention import MaskSpec, attention
from jax_distill.model.config import ModelConfig
from jax_distill.sharding import constrain

# Logical axes of each stacked decoder-layer parameter. Head-major layouts ([embed, heads, head_dim]) let the tensor
# axis split whole heads.
LAYER_AXES: dict[str, tuple[str, ...]] = {
    "input_norm": ("layers", "norm"),
    "q_proj": ("layers", "embed", "heads", "head_dim"),
    "q_bias": ("layers", "heads", "head_dim"),
    "k_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "k_bias": ("layers", "kv_heads", "head_dim"),
    "v_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "v_bias": ("layers", "kv_heads", "head_dim"),
    "o_proj": ("layers", "heads", "head_dim", "embed"),
    "post_norm": ("layers", "norm"),
    "gate_proj": ("layers", "embed", "mlp"),
    "up_proj": ("layers", "embed", "mlp"),
    "down_proj": ("layers", "mlp", "embed"),
}


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the stacked layer parameters for a resolved config."""
    L, D, H, K, hd, F = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                         cfg.head_dim, cfg.intermediate_size)
    return {
        "input_norm": (L, D),
        "q_proj": (L, D, H, hd),
        "q_bias": (L, H, hd),
        "k_proj": (L, D, K, hd),
        "k_bias": (L, K, hd),
        "v_proj": (L, D, K, hd),
        "v_bias": (L, K, hd),
        "o_proj": (L, H, hd, D),
        "post_norm": (L, D),
        "gate_proj": (L, D, F),
        "up_proj": (L, D, F),
        "down_proj": (L, F, D),
    }


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as transformers computes it: statistics in float32, result cast back before the scale."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32 [B, S, head_dim] for int positions [B, S] (HF's half-split rotary layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, S, heads, head_dim] by cos/sin [B, S, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class KVCache(NamedTuple):
    """Preallocated decode cache for all layers.

    k, v: [layers, B, T, kv_heads, head_dim] in the compute dtype; segment_ids int32 [B, T] (0 = empty/padding);
    index: int32 scalar, the next slot to write (same for every row: prompts are left-padded to a common length).
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        dtype = dtype or jnp.dtype(cfg.dtype)
        shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), jnp.int32),
                   jnp.zeros((), jnp.int32))


CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


def decoder_layer(cfg: ModelConfig, w: dict[str, jax.Array], x: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: jax.Array, kv: tuple[jax.Array, jax.Array] | None = None, index: jax.Array | None = None):
    """One pre-norm decoder layer.

    x [B, S, D] compute dtype; w: this layer's parameters (no ``layers`` axis); mask bool [B, 1, S, Skv].
    kv: this layer's cache (k, v) [B, T, K, hd] to write the new keys/values into at slot ``index`` and attend over.
    Returns (x [B, S, D], new (k, v) or None).
    """
    dt = x.dtype
    w = {name: p.astype(dt) for name, p in w.items()}
    h = rms_norm(x, w["input_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("bsd,dhk->bshk", h, w["q_proj"]) + w["q_bias"]
    k = jnp.einsum("bsd,dhk->bshk", h, w["k_proj"]) + w["k_bias"]
    v = jnp.einsum("bsd,dhk->bshk", h, w["v_proj"]) + w["v_bias"]
    q = constrain(apply_rope(q, cos, sin), ("batch", "seq", "act_heads", None))
    k = apply_rope(k, cos, sin)
    new_kv = None
    if kv is not None:
        k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, index, 0, 0))
        new_kv = (k, v)
    out = attention(q, k.astype(dt), v.astype(dt), mask, cfg.attention)
    x = x + jnp.einsum("bshk,hkd->bsd", out, w["o_proj"])
    x = constrain(x, ("batch", "seq", "act_embed"))
    h = rms_norm(x, w["post_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("bsd,df->bsf", h, w["gate_proj"])
    up = jnp.einsum("bsd,df->bsf", h, w["up_proj"])
    act = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"))
    x = x + jnp.einsum("bsf,fd->bsd", act, w["down_proj"])
    return constrain(x, ("batch", "seq", "act_embed")), new_kv


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"unknown remat policy {policy!r}")


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, stacked along a leading ``layers`` axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = _dtype(cfg.param_dtype)
        normal = jax.nn.initializers.normal(cfg.init_std)
        for name, shape in layer_shapes(cfg).items():
            if name.endswith("norm"):
                value = jnp.ones(shape, pd)
            elif name.endswith("bias"):
                value = jnp.zeros(shape, pd)
            else:
                value = normal(rngs.params(), shape, pd)
            setattr(self, name, nnx.Param(value, axes=LAYER_AXES[name]))

    def weights(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in LAYER_AXES}


class Qwen2ForCausalLM(nnx.Module):
    """Qwen2 causal LM. ``cfg`` must be resolvable (preset or full architecture)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg = cfg.resolve()
        self.config = cfg
        pd = _dtype(cfg.param_dtype)
        normal = jax.nn.initializers.normal(cfg.init_std)
        self.embed = nnx.Param(normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), pd), axes=("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pd), axes=("norm",))
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Param(normal(rngs.params(), (cfg.hidden_size, cfg.vocab_size), pd),
                                     axes=("embed", "vocab"))

    # -- pieces the trainer uses separately (chunked loss never materialises all logits) --------------------------
    def head_weight(self) -> jax.Array:
        """Output projection [D, V] in the compute dtype (the transposed embedding when tied)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(_dtype(self.config.dtype))

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, cache: KVCache | None = None):
        """Final-norm hidden states [B, S, D] (compute dtype), and the updated cache when one is given.

        input_ids int32 [B, S]; positions int32 [B, S] (default 0..S-1; restart per packed document);
        segment_ids int32 [B, S] (default all 1; 0 = padding); cache: see :class:`KVCache`.
        """
        cfg = self.config
        b, s = input_ids.shape
        dt = _dtype(cfg.dtype)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        if segment_ids is None:
            segment_ids = jnp.ones((b, s), jnp.int32)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
        x = constrain(x, ("batch", "seq", "act_embed"))
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        weights = self.layers.weights()

        if cache is None:
            slots = jnp.arange(s, dtype=jnp.int32)
            mask = MaskSpec(segment_ids, segment_ids, slots, slots)

            def body(carry, w):
                y, _ = decoder_layer(cfg, w, carry, cos, sin, mask)
                return y, None

            body = _remat(body, cfg.remat)
            if cfg.scan_layers:
                x, _ = jax.lax.scan(body, x, weights)
            else:
                for i in range(cfg.num_hidden_layers):
                    x, _ = body(x, jax.tree.map(lambda p: p[i], weights))
            new_cache = None
        else:
            kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache.index))
            q_slots = cache.index + jnp.arange(s, dtype=jnp.int32)
            mask = MaskSpec(segment_ids, kv_seg, q_slots, jnp.arange(kv_seg.shape[1], dtype=jnp.int32))

            def body(carry, w_kv):
                w, k, v = w_kv
                y, (k, v) = decoder_layer(cfg, w, carry, cos, sin, mask, (k, v), cache.index)
                return y, (k, v)

            if cfg.scan_layers:
                x, (ks, vs) = jax.lax.scan(body, x, (weights, cache.k, cache.v))
            else:
                ks, vs = [], []
                for i in range(cfg.num_hidden_layers):
                    x, (k, v) = body(x, (jax.tree.map(lambda p: p[i], weights), cache.k[i], cache.v[i]))
                    ks.append(k)
                    vs.append(v)
                ks, vs = jnp.stack(ks), jnp.stack(vs)
            new_cache = KVCache(ks, vs, kv_seg, cache.index + s)
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        return x, new_cache

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, cache: KVCache | None = None):
        """Logits float32 [B, S, V] (and the updated cache when ``cache`` is given)."""
        h, new_cache = self.hidden_states(input_ids, positions, segment_ids, cache)
        logits = jnp.einsum("bsd,dv->bsv", h, self.head_weight(), preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "seq", "act_vocab"))
        return logits if cache is None else (logits, new_cache)


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen2ForCausalLM:
    """Randomly initialised model (transformers' normal(0, init_std) weights, unit norms, zero biases)."""
    return Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(params=seed))


def param_axes(model_or_state: Any) -> Any:
    """Pytree (like ``nnx.state(model, nnx.Param)``) of logical axis tuples for every parameter."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return jax.tree.map(lambda v: v.get_metadata()["axes"], state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def with_config(model: Qwen2ForCausalLM, **changes: Any) -> Qwen2ForCausalLM:
    """Same parameters, other execution policy (dtype, remat, attention...): e.g. bf16 compute for sampling."""
    graphdef, state = nnx.split(model)
    new = nnx.eval_shape(lambda: Qwen2ForCausalLM(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0)))
    new_graphdef, _ = nnx.split(new)
    return nnx.merge(new_graphdef, state)
