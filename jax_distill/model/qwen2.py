"""Qwen2 / Qwen2.5 decoder in Flax NNX, numerically equal to transformers' `Qwen2ForCausalLM`.

The module holds parameters only; the math is pure functions (`rms_norm`, `rope`, `decoder_layer`). Decoder layers
are stored stacked along a leading ``layers`` axis and run under `jax.lax.scan`, so an 80-layer model compiles in about
the time of one layer. Every parameter carries logical axis names (flax's ``out_sharding`` metadata) that
`jax_distill.sharding` maps onto mesh axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jax_distill.model.attention import MaskSpec, attention, cache_attention, make_mask
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
    """RMSNorm as transformers computes it: statistics in float32, result cast back before the scale.

    x [..., D]; weight [D]. Computed over the tokens flattened to one axis, [N, D]: with a batch of one, XLA:CPU
    (YNNPACK fusions, jaxlib 0.10) runs a multiply-reduce over a [1, S, D] array, such as this norm's weight gradient,
    ~60x slower than over [S, D] (33 ms vs 0.7 ms at 4096 x 512, per layer, per step)."""
    shape = x.shape
    x32 = x.reshape(-1, shape[-1]).astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (weight.astype(x.dtype) * normed.astype(x.dtype)).reshape(shape)


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
    """Preallocated decode cache for all layers, heads-major so attention reads it without transposing.

    k, v: either one stacked array [layers, B, kv_heads, T, head_dim] (carried through the layer scan and updated in
    place) or a tuple of per-layer arrays [B, kv_heads, T, head_dim] (layers unrolled; each buffer updated in place,
    which on CPU avoids copying a layer's slice out of the stack every step). Compute dtype.
    segment_ids int32 [B, T] (0 = empty/padding); index: the next slot to write, either an int32 scalar (same for
    every row: prompts left-padded to a common length) or int32 [B], one write position per row (continuous batching:
    each row holds its own request, started at its own time).
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    segment_ids: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None, per_row: bool = False) -> KVCache:
        """An empty cache: stacked when the layers are scanned, else one buffer per layer; ``per_row``: an index per row."""
        dtype = dtype or jnp.dtype(cfg.dtype)
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        if not cfg.layers_scanned():
            k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
        else:
            k = jnp.zeros((cfg.num_hidden_layers, *shape), dtype)
            v = jnp.zeros((cfg.num_hidden_layers, *shape), dtype)
        return cls(k, v, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch,) if per_row else (), jnp.int32))

    def with_length(self, length: int) -> KVCache:
        """This cache with its slot axis cut or zero-padded to ``length`` slots (new slots empty: segment id 0;
        callers keep every filled slot below ``length``)."""

        def fit(a, axis):
            if length <= a.shape[axis]:
                return jax.lax.slice_in_dim(a, 0, length, axis=axis)
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, length - a.shape[axis])
            return jnp.pad(a, widths)

        def slots(a):  # [.., T, head_dim]
            return fit(a, a.ndim - 2)

        return KVCache(jax.tree.map(slots, self.k), jax.tree.map(slots, self.v), fit(self.segment_ids, 1), self.index)


CACHE_AXES = ("layers", "batch", "kv_heads", "cache_seq", "head_dim")  # the stacked form


def _cache_write(buf: jax.Array, new: jax.Array, index: jax.Array, layer: jax.Array | None):
    """Write new keys or values [B, S, K, hd] at slot ``index`` of a cache buffer; returns (buffer, this layer's
    [B, K, T, hd] view). ``layer`` None: ``buf`` is one layer's [B, K, T, hd]; else the stack [L, B, K, T, hd].
    ``index`` int32 [B] (per-row positions): row r's S new entries go to slots index[r]..index[r]+S-1 (one scatter)."""
    if index.ndim == 1:
        rows = jnp.arange(new.shape[0])[:, None]
        slots = index[:, None] + jnp.arange(new.shape[1])  # [B, S]; the indexed view below is [B, S, K, hd]
        new = new.astype(buf.dtype)
        if layer is None:
            buf = buf.at[rows, :, slots].set(new, mode="drop")  # slots past the end write nothing
            return buf, buf
        buf = buf.at[layer, rows, :, slots].set(new, mode="drop")
        return buf, jax.lax.dynamic_index_in_dim(buf, layer, keepdims=False)
    new = new.swapaxes(1, 2).astype(buf.dtype)
    if layer is None:
        buf = jax.lax.dynamic_update_slice(buf, new, (0, 0, index, 0))
        return buf, buf
    buf = jax.lax.dynamic_update_slice(buf, new[None], (layer, 0, 0, index, 0))
    return buf, jax.lax.dynamic_index_in_dim(buf, layer, keepdims=False)


def _proj(x: jax.Array, w: jax.Array, eq: str) -> jax.Array:
    """``einsum(eq)`` over tokens flattened to one axis: x [B, S, ...] -> [B*S, ...] -> [B, S, ...].

    With a single token axis every weight gradient is one plain (tokens)-contracted matmul; with separate batch and
    sequence axes XLA:CPU lays the backward operands out transposed and runs those matmuls at half speed."""
    b, s = x.shape[:2]
    y = jnp.einsum(eq, x.reshape(b * s, *x.shape[2:]), w)
    return y.reshape(b, s, *y.shape[1:])


def decoder_layer(cfg: ModelConfig, w: dict[str, jax.Array], x: jax.Array, cos: jax.Array, sin: jax.Array,
                  mask: jax.Array, kv: tuple[jax.Array, jax.Array] | None = None, index: jax.Array | None = None,
                  layer: jax.Array | None = None):
    """One pre-norm decoder layer.

    x [B, S, D] compute dtype; w: this layer's parameters (no ``layers`` axis); mask bool [B, 1, S, Skv].
    kv: cache buffers (k, v) to write the new keys/values into at slot ``index`` and attend over: this layer's
    [B, K, T, hd], or with ``layer`` given, the whole stack [L, B, K, T, hd]. Returns (x [B, S, D], new kv or None).
    """
    dt = x.dtype
    w = {name: p.astype(dt) for name, p in w.items()}
    h = rms_norm(x, w["input_norm"], cfg.rms_norm_eps)
    q = _proj(h, w["q_proj"], "nd,dhk->nhk") + w["q_bias"]
    k = _proj(h, w["k_proj"], "nd,dhk->nhk") + w["k_bias"]
    v = _proj(h, w["v_proj"], "nd,dhk->nhk") + w["v_bias"]
    q = constrain(apply_rope(q, cos, sin), ("batch", "seq", "act_heads", None))
    k = apply_rope(k, cos, sin)
    if kv is None:
        new_kv = None
        out = attention(q, k, v, mask, cfg.attention, max_segments=cfg.max_segments)
    else:
        k_buf, k_layer = _cache_write(kv[0], k, index, layer)
        v_buf, v_layer = _cache_write(kv[1], v, index, layer)
        new_kv = (k_buf, v_buf)
        out = cache_attention(q, k_layer.astype(dt), v_layer.astype(dt), mask)
    x = x + _proj(out, w["o_proj"], "nhk,hkd->nd")
    x = constrain(x, ("batch", "seq", "act_embed"))
    h = rms_norm(x, w["post_norm"], cfg.rms_norm_eps)
    gate = _proj(h, w["gate_proj"], "nd,df->nf")
    up = _proj(h, w["up_proj"], "nd,df->nf")
    act = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"))
    x = x + _proj(act, w["down_proj"], "nf,fd->nd")
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


def _param(value: jax.Array, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter with its logical axes. Placement is decided by whoever builds the model (jit out_shardings from
    `sharding.param_shardings`, which warns about dimensions that do not divide), not eagerly at creation."""
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


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
            setattr(self, name, _param(value, LAYER_AXES[name]))

    def weights(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in LAYER_AXES}


class Qwen2ForCausalLM(nnx.Module):
    """Qwen2 causal LM. ``cfg`` must be resolvable (preset or full architecture)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg = cfg.resolve()
        self.config = cfg
        pd = _dtype(cfg.param_dtype)
        normal = jax.nn.initializers.normal(cfg.init_std)
        self.embed = _param(normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), pd), ("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = _param(jnp.ones((cfg.hidden_size,), pd), ("norm",))
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(normal(rngs.params(), (cfg.hidden_size, cfg.vocab_size), pd), ("embed", "vocab"))

    # -- pieces the trainer uses separately (chunked loss never materialises all logits) --------------------------
    def head_weight(self) -> jax.Array:
        """Output projection [D, V] in the compute dtype (the transposed embedding when tied)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(_dtype(self.config.dtype))

    def layer_weights(self) -> list[dict[str, jax.Array]]:
        """The decoder parameters split per layer. A decode loop takes them once, outside the loop: slicing the
        stacked arrays inside it copies every weight on every step on backends that do not fuse the slice."""
        stacked = self.layers.weights()
        return [{k: v[i] for k, v in stacked.items()} for i in range(self.config.num_hidden_layers)]

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, cache: KVCache | None = None,
                      layer_weights: list[dict[str, jax.Array]] | None = None):
        """Final-norm hidden states [B, S, D] (compute dtype), and the updated cache when one is given.

        input_ids int32 [B, S]; positions int32 [B, S] (default 0..S-1; restart per packed document);
        segment_ids int32 [B, S] (default all 1; 0 = padding); cache: see :class:`KVCache`;
        layer_weights: :meth:`layer_weights`, for the per-layer-cache path (default: sliced here).
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
            if cfg.layers_scanned():
                x, _ = jax.lax.scan(body, x, weights)
            else:
                for i in range(cfg.num_hidden_layers):
                    x, _ = body(x, jax.tree.map(lambda p: p[i], weights))
            new_cache = None
        else:
            if cache.index.ndim == 1:  # per-row write positions
                q_slots = cache.index[:, None] + jnp.arange(s, dtype=jnp.int32)  # [B, S]
                kv_seg = cache.segment_ids.at[jnp.arange(b)[:, None], q_slots].set(segment_ids, mode="drop")
            else:
                q_slots = cache.index + jnp.arange(s, dtype=jnp.int32)
                kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache.index))
            mask = make_mask(segment_ids, kv_seg, q_slots, jnp.arange(kv_seg.shape[1], dtype=jnp.int32))
            if isinstance(cache.k, tuple):  # per-layer buffers, layers unrolled
                ks, vs = [], []
                per_layer = layer_weights if layer_weights is not None else self.layer_weights()
                for i, w in enumerate(per_layer):
                    x, (k, v) = decoder_layer(cfg, w, x, cos, sin, mask, (cache.k[i], cache.v[i]), cache.index)
                    ks.append(k)
                    vs.append(v)
                ks, vs = tuple(ks), tuple(vs)
            else:  # the stacked cache rides in the layer scan's carry, so each layer updates it in place

                def body(carry, w):
                    y, i, k, v = carry
                    y, (k, v) = decoder_layer(cfg, w, y, cos, sin, mask, (k, v), cache.index, layer=i)
                    return (y, i + 1, k, v), None

                (x, _, ks, vs), _ = jax.lax.scan(body, (x, jnp.int32(0), cache.k, cache.v), weights)
            new_cache = KVCache(ks, vs, kv_seg, cache.index + s)
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        return x, new_cache

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, cache: KVCache | None = None,
                 layer_weights: list[dict[str, jax.Array]] | None = None):
        """Logits float32 [B, S, V] (and the updated cache when ``cache`` is given)."""
        h, new_cache = self.hidden_states(input_ids, positions, segment_ids, cache, layer_weights)
        logits = jnp.einsum("bsd,dv->bsv", h, self.head_weight(), preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "seq", "act_vocab"))
        return logits if cache is None else (logits, new_cache)


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen2ForCausalLM:
    """Randomly initialised model (transformers' normal(0, init_std) weights, unit norms, zero biases)."""
    return Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(params=seed))


def with_config(model: Qwen2ForCausalLM, **changes: Any) -> Qwen2ForCausalLM:
    """Same parameters, other execution policy (dtype, remat, attention...): e.g. bf16 compute for sampling."""
    graphdef, state = nnx.split(model)
    new = nnx.eval_shape(lambda: Qwen2ForCausalLM(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0)))
    new_graphdef, _ = nnx.split(new)
    return nnx.merge(new_graphdef, state)
