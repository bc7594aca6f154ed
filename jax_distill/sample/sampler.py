"""Jitted KV-cache sampler: one prefill, then a `lax.while_loop` of single-token decode steps.

Prompts are left-padded to a bucketed length so that every row's next token is written at the same cache slot;
padding has segment id 0 and is never attended to. Shapes are bucketed (prompt length and batch to powers of two,
at least 16) so that a benchmark run compiles once per bucket, not once per prompt.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jax_distill.data.tokenize import QWEN_SPECIAL_IDS
from jax_distill.model.config import ModelConfig
from jax_distill.model.qwen2 import CACHE_AXES, KVCache, Qwen2ForCausalLM, with_config
from jax_distill.sharding import named_sharding, param_shardings

DEFAULT_STOP_IDS = (QWEN_SPECIAL_IDS["<|endoftext|>"], QWEN_SPECIAL_IDS["<|im_end|>"])


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def sample_logits(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
                  *, use_filter: bool) -> jax.Array:
    """Next tokens int32 [B] from float32 logits [B, V].

    temperature 0 means greedy. ``keys`` [B] are per-row PRNG keys (a row's draw does not depend on its batch mates).
    With ``use_filter``: top-k (0 = off) and nucleus top-p (1.0 = off) are applied on one descending sort.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if use_filter:
        order = jnp.argsort(-scaled, axis=-1)
        sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
        v = logits.shape[-1]
        rank = jnp.arange(v)[None, :]
        k = jnp.where(top_k > 0, top_k, v)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum_before = jnp.cumsum(probs, axis=-1) - probs  # keep a token if the mass before it is < top_p
        keep_sorted = (rank < k) & (cum_before < top_p)
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        scaled = jnp.where(keep, scaled, -jnp.inf)
    drawn = jax.vmap(lambda k_, l_: jax.random.categorical(k_, l_))(keys, scaled).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "use_filter", "cache_sharding"))
def _generate_padded(graphdef: Any, params: Any, tokens: jax.Array, segment_ids: jax.Array, row_seeds: jax.Array,
                     stop_ids: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array, *,
                     max_new_tokens: int, use_filter: bool, cache_sharding: Any = None):
    """tokens/segment_ids int32 [B, P] left-padded; returns generated ids int32 [B, max_new_tokens] (-1 after stop)."""
    model: Qwen2ForCausalLM = nnx.merge(graphdef, params)
    cfg = model.config
    b, p = tokens.shape
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0).astype(jnp.int32)
    cache = KVCache.zeros(cfg, b, p + max_new_tokens)  # per-layer buffers when the layers are unrolled
    if cache_sharding is not None:
        pin = functools.partial(jax.lax.with_sharding_constraint, shardings=cache_sharding)
        cache = cache._replace(k=jax.tree.map(pin, cache.k), v=jax.tree.map(pin, cache.v))
    # Sliced once here, not on every step inside the loop (see Qwen2ForCausalLM.layer_weights).
    layer_weights = model.layer_weights() if isinstance(cache.k, tuple) else None
    logits, cache = model(tokens, positions, segment_ids, cache, layer_weights)
    base_keys = jax.vmap(jax.random.key)(row_seeds)

    def pick(step_logits, step):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(base_keys, step)
        return sample_logits(step_logits, keys, temperature, top_p, top_k, use_filter=use_filter)

    first = pick(logits[:, -1], 0)
    out = jnp.full((b, max_new_tokens), -1, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, stop_ids)
    next_pos = positions[:, -1] + 1

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, last, pos, cache, done, out = state
        logits, cache = model(last[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache, layer_weights)
        tok = pick(logits[:, 0], step)
        tok = jnp.where(done, -1, tok)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, step))
        done = done | jnp.isin(tok, stop_ids)
        return step + 1, jnp.maximum(tok, 0), pos + 1, cache, done, out

    state = (jnp.int32(1), first, next_pos, cache, done, out)
    *_, out = jax.lax.while_loop(cond, body, state)
    return out


def generate(model: Qwen2ForCausalLM, prompt_token_ids: Sequence[Sequence[int]], max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] = 0,
             stop_ids: Sequence[int] | None = None, pad_id: int = 0, mesh: Mesh | None = None,
             unroll_layers: bool = True) -> list[list[int]]:
    """Sample continuations for a batch of prompts.

    prompt_token_ids: list of token-id lists (any lengths). ``seed``: one int (row i uses seed + i) or one per row,
    so a sample is reproducible whatever batch it is drawn in. Returns, per prompt, the generated ids with the prompt
    and the stop token excluded. ``stop_ids`` default: Qwen's <|endoftext|> and <|im_end|>.
    ``mesh``: shard the batch and the KV cache (heads on the tensor axis) for large models.
    ``unroll_layers``: decode with the layers unrolled and one cache buffer per layer, each updated in place (the
    fastest step; it holds a per-layer copy of the decoder weights while sampling); False keeps the layer scan with
    the stacked cache in its carry, compiling one layer body, for very deep models where compile time or weight
    memory matters more.
    """
    if not prompt_token_ids:
        return []
    if any(len(p) == 0 for p in prompt_token_ids):
        raise ValueError("empty prompt: every prompt needs at least one token")
    n = len(prompt_token_ids)
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    stops = list(DEFAULT_STOP_IDS if stop_ids is None else stop_ids) or [-2]
    p_len = bucket(max(len(p) for p in prompt_token_ids))
    b = bucket(n, minimum=1)
    tokens = np.full((b, p_len), pad_id, np.int32)
    seg = np.zeros((b, p_len), np.int32)
    for i, p in enumerate(prompt_token_ids):
        tokens[i, p_len - len(p):] = p
        seg[i, p_len - len(p):] = 1
    seg[n:, -1] = 1  # filler rows (batch bucket) decode a pad token; their output is dropped
    row_seeds = np.asarray(seeds + [0] * (b - n), np.uint32)
    if model.config.scan_layers == unroll_layers:
        model = with_config(model, scan_layers=not unroll_layers)
    graphdef, params = nnx.split(model)
    cache_sharding = None
    if mesh is not None:
        cfg = model.config
        shape = (cfg.num_hidden_layers, b, cfg.num_key_value_heads, p_len + max_new_tokens, cfg.head_dim)
        axes = CACHE_AXES
        if unroll_layers:
            shape, axes = shape[1:], axes[1:]
        cache_sharding = named_sharding(mesh, axes, shape)
    out = _generate_padded(graphdef, params, jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(row_seeds),
                           jnp.asarray(stops, jnp.int32), jnp.float32(temperature), jnp.float32(top_p),
                           jnp.int32(top_k), max_new_tokens=int(max_new_tokens),
                           use_filter=bool(top_k > 0 or top_p < 1.0), cache_sharding=cache_sharding)
    out = np.asarray(jax.device_get(out))[:n]
    result = []
    stop_set = set(stops)
    for row in out:
        ids = []
        for t in row.tolist():
            if t < 0 or t in stop_set:
                break
            ids.append(t)
        result.append(ids)
    return result


def abstract_decode_step(model_cfg: ModelConfig, mesh: Mesh, *, batch_size: int, max_len: int):
    """(jitted one-token decode step, abstract args) for AOT planning; allocates nothing.

    The step maps (params, cache, tokens [B, 1], positions [B, 1]) -> (logits [B, 1, V], cache).
    """
    from jax_distill.model.qwen2 import init_model

    cfg = model_cfg.resolve()
    model = nnx.eval_shape(lambda: init_model(cfg))
    graphdef, state = nnx.split(model)
    p_shard = param_shardings(model, mesh)
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), nnx.to_pure_dict(state),
                          p_shard)
    kv_shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
    kv_sharding = named_sharding(mesh, CACHE_AXES, kv_shape)
    row = named_sharding(mesh, ("batch", None), (batch_size, 1))
    seg_sharding = named_sharding(mesh, ("batch", None), (batch_size, max_len))
    rep = NamedSharding(mesh, jax.sharding.PartitionSpec())
    dt = jnp.dtype(cfg.dtype)
    cache = KVCache(jax.ShapeDtypeStruct(kv_shape, dt, sharding=kv_sharding),
                    jax.ShapeDtypeStruct(kv_shape, dt, sharding=kv_sharding),
                    jax.ShapeDtypeStruct((batch_size, max_len), jnp.int32, sharding=seg_sharding),
                    jax.ShapeDtypeStruct((), jnp.int32, sharding=rep))
    tok = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32, sharding=row)

    def step(params, cache, tokens, positions):
        m = nnx.merge(graphdef, params)
        return m(tokens, positions, jnp.ones_like(tokens), cache)

    cache_shardings = KVCache(kv_sharding, kv_sharding, seg_sharding, rep)
    jitted = jax.jit(step, in_shardings=(p_shard, cache_shardings, row, row),
                     out_shardings=(named_sharding(mesh, ("batch", None, "act_vocab"), (batch_size, 1, cfg.vocab_size)),
                                    cache_shardings), donate_argnums=(1,))
    return jitted, (params, cache, tok, tok)
