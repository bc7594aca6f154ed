"""Jitted KV-cache sampler (static batching): one prefill, then `lax.while_loop`s of single-token decode steps.

Prompts are left-padded to a bucketed length so that every row's next token is written at the same cache slot;
padding has segment id 0 and is never attended to. Shapes are bucketed (prompt length and batch to powers of two,
at least 16) so that a benchmark run compiles once per bucket, not once per prompt. The cache holds the filled
slots plus at most a third (length buckets 2^k and 1.5 * 2^k): a decode loop runs until its cache is full, the host
pads the cache to the next bucket and the next loop goes on, so a step's attention reads what decoding has written,
not the whole token budget. Continuous batching (refilling finished rows) is `sample/engine.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_distill.data.tokenize import QWEN_SPECIAL_IDS
from jax_distill.model.qwen2 import CACHE_AXES, KVCache, Qwen2ForCausalLM, with_config
from jax_distill.sharding import named_sharding

DEFAULT_STOP_IDS = (QWEN_SPECIAL_IDS["<|endoftext|>"], QWEN_SPECIAL_IDS["<|im_end|>"])


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, int(n - 1).bit_length()))


# top-p alone: the nucleus is looked for among the top NUCLEUS_CAP tokens (`lax.top_k`, no vocabulary sort); a step
# where some row's nucleus is larger falls back to a full sort for that step. Same tokens either way.
NUCLEUS_CAP = 256


def filter_cap(top_p: float, top_k: int) -> int:
    """Static candidate count for :func:`sample_logits`: top_k when set, else NUCLEUS_CAP (top-p alone), 0 when off."""
    return int(top_k) if top_k > 0 else (NUCLEUS_CAP if top_p < 1.0 else 0)


def _first_above(cum: jax.Array, target: jax.Array, last: jax.Array) -> jax.Array:
    """Per row, the first index i with cum[i] > target (cum non-decreasing), at most ``last``."""
    return jnp.minimum(jnp.sum(cum <= target[:, None], axis=-1), last).astype(jnp.int32)


def _draw_from_top(scaled: jax.Array, lse: jax.Array, u: jax.Array, top_p: jax.Array, top_k: jax.Array, c: int):
    """Draw among the top ``c`` tokens: top-k and nucleus on the sorted candidates, then the inverse CDF at ``u``.
    Returns (tokens [B], covered [B]: the kept set lies inside the top c, so the draw is the full-vocabulary one)."""
    v = scaled.shape[-1]
    vals, idx = jax.lax.top_k(scaled, c)  # descending
    probs = jnp.exp(vals - lse[:, None])
    cum = jnp.cumsum(probs, axis=-1)
    k = jnp.where(top_k > 0, top_k, v)
    keep = (jnp.arange(c)[None, :] < k) & (cum - probs < top_p)  # keep a token if the mass before it is < top_p
    keep = keep.at[:, 0].set(True)  # a prefix of the sorted candidates, never empty
    n_keep = jnp.sum(keep, axis=-1)
    total = jnp.take_along_axis(cum, (n_keep - 1)[:, None], axis=-1)[:, 0]
    j = _first_above(cum, u * total, n_keep - 1)
    covered = (k <= c) | (cum[:, -1] >= top_p)
    return jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0].astype(jnp.int32), covered


def sample_logits(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
                  *, use_filter: bool, cap: int = 0, greedy_only: bool = False) -> jax.Array:
    """Next tokens int32 [B] from float32 logits [B, V].

    temperature 0 means greedy (``greedy_only``: every row is greedy, nothing else is computed). ``keys`` [B] are
    per-row PRNG keys: row r draws one uniform u_r and takes the first token whose cumulative probability exceeds it
    (inverse CDF), so a row's draw does not depend on its batch mates. With ``use_filter``: top-k (0 = off) and nucleus
    top-p (1.0 = off, mass measured on the full distribution), on candidates sorted by probability. ``cap`` > 0: the
    candidates are the top ``cap`` tokens (`lax.top_k`, no vocabulary sort; `filter_cap` picks it), with an exact
    fallback to the full sort on a step where some row's kept set is not inside them; 0: always the full sort.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if greedy_only:
        return greedy
    scaled = logits / jnp.maximum(temperature, 1e-6)
    u = jax.vmap(lambda k_: jax.random.uniform(k_, (), jnp.float32))(keys)
    v = logits.shape[-1]
    if not use_filter:  # inverse CDF in vocabulary order
        probs = jax.nn.softmax(scaled, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        drawn = _first_above(cum, u * cum[:, -1], jnp.int32(v - 1))
    else:
        lse = jax.nn.logsumexp(scaled, axis=-1)
        if cap <= 0 or cap >= v:
            drawn, _ = _draw_from_top(scaled, lse, u, top_p, top_k, v)
        else:
            drawn, covered = _draw_from_top(scaled, lse, u, top_p, top_k, cap)
            drawn = jax.lax.cond(jnp.all(covered), lambda: drawn,
                                 lambda: _draw_from_top(scaled, lse, u, top_p, top_k, v)[0])
    return jnp.where(temperature > 0, drawn, greedy)


def last_logits(model: Qwen2ForCausalLM, hidden: jax.Array, last: jax.Array) -> jax.Array:
    """float32 logits [B, V] at position ``last`` [B] of each row of final hidden states [B, S, D] (the prefill's
    next-token logits, without the [B, S, V] of every prompt position)."""
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jnp.einsum("bd,dv->bv", h, model.head_weight(), preferred_element_type=jnp.float32)


def window_bucket(n: int, minimum: int = 64) -> int:
    """Cache length for ``n`` needed slots: the smallest 2^k or 1.5 * 2^k >= max(n, minimum) (<= 33% slack)."""
    n = max(n, minimum)
    p = 1 << (n - 1).bit_length()
    return 3 * p // 4 if 3 * p // 4 >= n else p


def _pin_cache(cache: KVCache, sharding: Any) -> KVCache:
    if sharding is None:
        return cache
    pin = functools.partial(jax.lax.with_sharding_constraint, shardings=sharding)
    return cache._replace(k=jax.tree.map(pin, cache.k), v=jax.tree.map(pin, cache.v))


def _picker(row_seeds, temperature, top_p, top_k, use_filter, cap, greedy_only):
    base_keys = jax.vmap(jax.random.key)(row_seeds)

    def pick(step_logits, step):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(base_keys, step)
        return sample_logits(step_logits, keys, temperature, top_p, top_k, use_filter=use_filter, cap=cap,
                             greedy_only=greedy_only)

    return pick


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "max_new_tokens", "use_filter", "cap",
                                             "greedy_only", "cache_sharding", "cache_dtype"))
def _prefill_padded(graphdef: Any, params: Any, tokens: jax.Array, segment_ids: jax.Array, row_seeds: jax.Array,
                    stop_ids: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array, *, window: int,
                    max_new_tokens: int, use_filter: bool, cap: int = 0, greedy_only: bool = False,
                    cache_sharding: Any = None, cache_dtype: Any = None):
    """Prefill left-padded tokens/segment_ids int32 [B, P] into a cache of ``window`` >= P slots and draw the first
    token. Returns (cache, layer weights or None, decode state: (step, last token [B], next position [B], done [B],
    generated ids int32 [B, max_new_tokens], -1 where not generated))."""
    model: Qwen2ForCausalLM = nnx.merge(graphdef, params)
    b, p = tokens.shape
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0).astype(jnp.int32)
    cache = _pin_cache(KVCache.zeros(model.config, b, window, cache_dtype), cache_sharding)
    # Sliced once here, not on every decode step (see Qwen2ForCausalLM.layer_weights).
    layer_weights = model.layer_weights() if isinstance(cache.k, tuple) else None
    hidden, cache = model.hidden_states(tokens, positions, segment_ids, cache, layer_weights)
    pick = _picker(row_seeds, temperature, top_p, top_k, use_filter, cap, greedy_only)
    first = pick(last_logits(model, hidden, jnp.full((b,), p - 1, jnp.int32)), 0)
    out = jnp.full((b, max_new_tokens), -1, jnp.int32).at[:, 0].set(first)
    state = (jnp.int32(1), first, positions[:, -1] + 1, jnp.isin(first, stop_ids), out)
    return _pin_cache(cache, cache_sharding), layer_weights, state


@functools.partial(jax.jit, static_argnames=("length", "cache_sharding"))
def _grow(cache: KVCache, *, length: int, cache_sharding: Any = None) -> KVCache:
    """The cache with its slot axis zero-padded to ``length`` (new slots empty: segment id 0)."""
    return _pin_cache(cache.with_length(length), cache_sharding)


@functools.partial(jax.jit, static_argnames=("graphdef", "use_filter", "cap", "greedy_only", "cache_sharding"),
                   donate_argnames=("cache", "state"))
def _decode_padded(graphdef: Any, params: Any, layer_weights: Any, cache: KVCache, state: tuple, end_step: jax.Array,
                   row_seeds: jax.Array, stop_ids: jax.Array, temperature: jax.Array, top_p: jax.Array,
                   top_k: jax.Array, *, use_filter: bool, cap: int = 0, greedy_only: bool = False,
                   cache_sharding: Any = None):
    """Decode steps until step ``end_step`` (the last one the cache has a slot for) or every row is done, in a
    `lax.while_loop`; attention reads the cache's T slots, the filled part plus at most a third. Returns
    (cache, state) as :func:`_prefill_padded`."""
    model: Qwen2ForCausalLM = nnx.merge(graphdef, params)
    pick = _picker(row_seeds, temperature, top_p, top_k, use_filter, cap, greedy_only)
    b = cache.segment_ids.shape[0]

    def cond(c):
        (step, _, _, done, _), _ = c
        return (step < end_step) & ~jnp.all(done)

    def body(c):
        (step, last, pos, done, out), cache = c
        logits, cache = model(last[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache, layer_weights)
        tok = jnp.where(done, -1, pick(logits[:, 0], step))
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, step))
        done = done | jnp.isin(tok, stop_ids)
        return (step + 1, jnp.maximum(tok, 0), pos + 1, done, out), _pin_cache(cache, cache_sharding)

    state, cache = jax.lax.while_loop(cond, body, (state, cache))
    return cache, state


def generate(model: Qwen2ForCausalLM, prompt_token_ids: Sequence[Sequence[int]], max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] = 0,
             stop_ids: Sequence[int] | None = None, pad_id: int = 0, mesh: Mesh | None = None,
             unroll_layers: bool = True, cache_dtype: Any = None, grow_cache: bool = True) -> list[list[int]]:
    """Sample continuations for a batch of prompts.

    prompt_token_ids: list of token-id lists (any lengths). ``seed``: one int (row i uses seed + i) or one per row,
    so a sample is reproducible whatever batch it is drawn in. Returns, per prompt, the generated ids with the prompt
    and the stop token excluded. ``stop_ids`` default: Qwen's <|endoftext|> and <|im_end|>.
    ``mesh``: shard the batch and the KV cache (heads on the tensor axis) for large models.
    ``unroll_layers``: decode with the layers unrolled and one cache buffer per layer, each updated in place (the
    fastest step; it holds a per-layer copy of the decoder weights while sampling); False keeps the layer scan with
    the stacked cache in its carry, compiling one layer body, for very deep models where compile time or weight
    memory matters more. ``cache_dtype``: KV cache dtype (default: the compute dtype; e.g. "bfloat16" halves the
    cache's memory and the bytes each step reads). ``grow_cache``: the cache grows with the rows (length buckets),
    so a step reads the filled part, and the first call reaching a new length compiles one more decode loop (cached
    after that); False allocates the whole budget at once (one decode compile, every step reads the whole budget).
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
    if model.config.scan_layers != (not unroll_layers):  # auto (None) or the other choice
        model = with_config(model, scan_layers=not unroll_layers)
    graphdef, params = nnx.split(model)
    cfg = model.config

    def cache_sharding(length: int):
        if mesh is None:
            return None
        shape = (cfg.num_hidden_layers, b, cfg.num_key_value_heads, length, cfg.head_dim)
        skip = 1 if unroll_layers else 0  # per-layer buffers have no layer axis
        return named_sharding(mesh, CACHE_AXES[skip:], shape[skip:])

    sampling = (jnp.asarray(row_seeds), jnp.asarray(stops, jnp.int32), jnp.float32(temperature), jnp.float32(top_p),
                jnp.int32(top_k))
    opts = {"use_filter": bool(top_k > 0 or top_p < 1.0), "cap": filter_cap(top_p, top_k),
            "greedy_only": temperature <= 0}
    # The cache grows by length buckets (2 per octave) as decoding fills it, so a step's attention reads the filled
    # part, not the whole budget; each length compiles once. The last token is never fed back: one slot fewer.
    total = p_len + max(int(max_new_tokens) - 1, 0)
    window = min(total, window_bucket(p_len + 1)) if grow_cache else total
    cache, layer_weights, state = _prefill_padded(
        graphdef, params, jnp.asarray(tokens), jnp.asarray(seg), *sampling, window=window,
        max_new_tokens=int(max_new_tokens), cache_sharding=cache_sharding(window),
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype), **opts)
    while True:
        end = min(int(max_new_tokens), window - p_len + 1)  # step s writes slot p_len + s - 1
        cache, state = _decode_padded(graphdef, params, layer_weights, cache, state, jnp.int32(end), *sampling,
                                      cache_sharding=cache_sharding(window), **opts)
        step, done = jax.device_get((state[0], state[3]))
        if step >= max_new_tokens or done.all():
            break
        window = min(total, window_bucket(window + 1))
        cache = _grow(cache, length=window, cache_sharding=cache_sharding(window))
    out = np.asarray(jax.device_get(state[4]))[:n]
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
