"""Continuous batching: a fixed number of decode slots, each refilled with the next pending request when its row stops.

Static batching (`sampler.generate`) decodes a batch until its longest row stops: with long-CoT lengths (a few
samples run to the budget, most stop far earlier) most of each batch's steps feed finished rows. Here every row owns
its request: when a row emits a stop token or reaches its own token budget, its slot is prefilled in place with the
next pending (problem, sample) request, until all work is done.

Pieces (each a jitted function with static shapes; the host loop between them only schedules):

- ``_prefill``: the distinct prompts of the requests about to start, right-padded to a bucketed length, run through
  the model into a fresh cache. A prompt is prefilled once however many samples are drawn from it (eval draws
  n_samples per problem); its keys/values and next-token logits are kept until its last request has started.
- ``_insert``: copies a prompt's keys/values into the rows of the slots that start from it (row reset: segment ids
  beyond the prompt are 0, so nothing of the slot's previous request stays visible) and draws each request's first
  token with its own seed.
- ``_decode``: up to ``chunk_steps`` decode steps in a `lax.while_loop`, leaving early once enough rows have
  stopped to be worth refilling; finished rows idle (they neither advance nor emit) until the host refills them.
- The KV cache keeps one write position per row (``KVCache.index`` [B]). Row r's prompt sits at slots 0..len-1, so a
  row's position is its write slot. The cache's length follows the longest live row (length buckets, 2 per octave):
  decode attention reads only the filled part of the cache instead of the whole budget.
- When nothing is pending and at most half the rows are live, the live rows are gathered into a smaller batch
  (power-of-two buckets), so the tail of long samples does not carry finished rows.

Sampling is `sampler.sample_logits` with the same per-row keys as `generate` (``fold_in(key(seed), step)``, step =
index of the generated token), so every sample is what `generate([prompt], seed=[s], max_new_tokens=budget)` gives.

On a decode mesh (``Engine(model, mesh=..., rules=...)``, rules usually `sharding.DECODE_RULES`) the pieces are
traced under the mesh and rules and pin what they return (:class:`DecodeLayout`): weights split over ``tensor``,
the KV cache's rows over ``data`` and its kv heads over ``tensor``, the per-row scheduling state (a few ints per row)
replicated, so every process reads it back and takes the same scheduling decisions. Several processes therefore run
one global decode step together, each holding its share of the rows and of the weights; nothing is gathered but the
tokens.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_distill.model.qwen2 import CACHE_AXES, LAYER_AXES, KVCache, Qwen2ForCausalLM, with_config
from jax_distill.sample.sampler import (DEFAULT_STOP_IDS, bucket, filter_cap, last_logits, sample_logits,
                                        window_bucket)
from jax_distill.sharding import Rules, current_rules, named_sharding, param_shardings


class _Rows(NamedTuple):
    """Per-slot decode state, all [B]."""

    last: jax.Array  # int32, the last generated token (the next step's input)
    step: jax.Array  # int32, tokens generated so far (the fold_in index of the next draw)
    budget: jax.Array  # int32, the request's max_new_tokens
    seed: jax.Array  # uint32
    done: jax.Array  # bool: stopped, or an empty slot


class _Sampling(NamedTuple):
    """Traced sampling parameters (one value for the whole run)."""

    stop_ids: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array


class DecodeLayout(NamedTuple):
    """Where the engine's arrays live on a decode mesh (hashable: a static argument of the jitted pieces)."""

    mesh: Mesh
    rules: Rules
    kv: NamedSharding  # cache keys/values: [B, K, T, hd] per layer (or stacked [L, B, K, T, hd]): rows and kv heads
    segments: NamedSharding  # cache segment ids [B, T] and prefill tokens [n, P]: rows on data
    logits: NamedSharding  # next-token logits [n, V]: rows on data, vocabulary on tensor
    replicated: NamedSharding  # per-row state, cache write slots, tokens: what the host reads back

    @classmethod
    def build(cls, cfg: Any, mesh: Mesh, rules: Rules, *, stacked: bool) -> DecodeLayout:
        d = mesh.shape["data"]
        kv_shape = (cfg.num_hidden_layers, d, cfg.num_key_value_heads, 1, cfg.head_dim)
        axes = CACHE_AXES if stacked else CACHE_AXES[1:]
        kv = named_sharding(mesh, axes, kv_shape[-len(axes):], "KV cache", rules)
        return cls(mesh, rules, kv, named_sharding(mesh, ("batch", None), (d, 1), "cache segment ids", rules),
                   named_sharding(mesh, ("batch", "act_vocab"), (d, cfg.vocab_size), "logits", rules),
                   NamedSharding(mesh, P()))

    @property
    def rows_multiple(self) -> int:
        """Batch sizes are kept a multiple of this (the data axis), so rows split evenly."""
        return self.mesh.shape["data"]


def _pin(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _pin_cache(cache: KVCache, layout: DecodeLayout | None) -> KVCache:
    if layout is None:
        return cache
    kv = functools.partial(_pin, sharding=layout.kv)
    return KVCache(jax.tree.map(kv, cache.k), jax.tree.map(kv, cache.v), _pin(cache.segment_ids, layout.segments),
                   _pin(cache.index, layout.replicated))


def _pin_rows(rows, layout: DecodeLayout | None):
    return rows if layout is None else jax.tree.map(functools.partial(_pin, sharding=layout.replicated), rows)


@contextlib.contextmanager
def _traced_on(layout: DecodeLayout | None):
    """While tracing: the mesh and rules the model's activation constraints (`sharding.constrain`) read."""
    if layout is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(layout.mesh.abstract_mesh), nnx.logical_axis_rules(layout.rules):
        yield


def _pick(logits, sp: _Sampling, seeds, steps, opts):
    keys = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.key(s), t))(seeds, steps)
    use_filter, cap, greedy_only = opts
    return sample_logits(logits, keys, sp.temperature, sp.top_p, sp.top_k, use_filter=use_filter, cap=cap,
                         greedy_only=greedy_only)


@functools.partial(jax.jit, static_argnames=("graphdef", "layout"))
def _layer_weights(graphdef, params, *, layout=None):
    """The stacked decoder weights split per layer; on a mesh each keeps its stacked sharding (less the layer axis)."""
    with _traced_on(layout):
        per_layer = nnx.merge(graphdef, params).layer_weights()
        if layout is not None:
            per_layer = [{k: _pin(w, named_sharding(layout.mesh, LAYER_AXES[k][1:], w.shape, f"layer weight {k}",
                                                    layout.rules)) for k, w in ws.items()} for ws in per_layer]
        return per_layer


@functools.partial(jax.jit, static_argnames=("graphdef", "kv_dtype", "layout"))
def _prefill(graphdef, params, layer_weights, tokens, lens, *, kv_dtype, layout=None):
    """Run distinct prompts (tokens int32 [n, P], right-padded; lens [n]) into a fresh [n, P] cache. Returns (keys,
    values, float32 next-token logits [n, V]). Compiled per (n, P) only: `_insert` places rows in the big cache."""
    with _traced_on(layout):
        model: Qwen2ForCausalLM = nnx.merge(graphdef, params)
        n, p = tokens.shape
        seg = (jnp.arange(p)[None, :] < lens[:, None]).astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (n, p))
        fresh = _pin_cache(KVCache.zeros(model.config, n, p, kv_dtype), layout)
        hidden, fresh = model.hidden_states(tokens, positions, seg, fresh, layer_weights)
        fresh = _pin_cache(fresh, layout)
        return fresh.k, fresh.v, _pin(last_logits(model, hidden, lens - 1), layout and layout.logits)


@functools.partial(jax.jit, static_argnames=("opts", "layout"), donate_argnames=("cache", "rows"))
def _insert(cache: KVCache, rows: _Rows, k, v, logits, src, lens, slots, seeds, budgets, sp: _Sampling, *, opts,
            layout=None):
    """Start requests in slots from prefilled prompts: request j takes prompt row ``src[j]`` of (k, v, logits) into
    slot ``slots[j]`` (out of range, for filler entries: nothing is written) and draws its first token with its own
    seed. The slot's row is reset (segment ids beyond the prompt are 0, so nothing of its previous request stays
    visible). Returns (cache, rows, first tokens [n], done [n]: requests finished by their first token)."""
    p = jax.tree.leaves(k)[0].shape[-2]
    t = cache.segment_ids.shape[1]
    first = _pick(logits[src], sp, seeds, jnp.zeros_like(lens), opts)
    if isinstance(cache.k, tuple):  # per-layer [B, K, T, hd]

        def put(big, new):
            return big.at[slots, :, :p].set(new[src], mode="drop")
    else:  # stacked [L, B, K, T, hd]

        def put(big, new):
            return big.at[:, slots, :, :p].set(new[:, src], mode="drop")

    seg = (jnp.arange(t)[None, :] < lens[:, None]).astype(jnp.int32)
    cache = KVCache(jax.tree.map(put, cache.k, k), jax.tree.map(put, cache.v, v),
                    cache.segment_ids.at[slots].set(seg, mode="drop"), cache.index.at[slots].set(lens, mode="drop"))
    done = jnp.isin(first, sp.stop_ids) | (budgets <= 1)
    rows = _Rows(rows.last.at[slots].set(first, mode="drop"),
                 rows.step.at[slots].set(jnp.ones_like(lens), mode="drop"),
                 rows.budget.at[slots].set(budgets, mode="drop"),
                 rows.seed.at[slots].set(seeds, mode="drop"),
                 rows.done.at[slots].set(done, mode="drop"))
    rep = layout and layout.replicated
    return _pin_cache(cache, layout), _pin_rows(rows, layout), _pin(first, rep), _pin(done, rep)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "opts", "layout"), donate_argnames=("cache", "rows"))
def _decode(graphdef, params, layer_weights, cache: KVCache, rows: _Rows, sp: _Sampling, exit_at, *, steps, opts,
            layout=None):
    """Up to ``steps`` decode steps; stops early when all rows are done or at least ``exit_at`` are.
    Returns (cache, rows, tokens int32 [B, steps]: each step's token per row, -1 where the row was done)."""
    with _traced_on(layout):
        return _decode_traced(graphdef, params, layer_weights, cache, rows, sp, exit_at, steps, opts, layout)


def _decode_traced(graphdef, params, layer_weights, cache, rows, sp, exit_at, steps, opts, layout):
    model: Qwen2ForCausalLM = nnx.merge(graphdef, params)
    b = rows.last.shape[0]
    ones = jnp.ones((b, 1), jnp.int32)

    def cond(c):
        i, _, rows, _ = c
        n_done = jnp.sum(rows.done.astype(jnp.int32))
        return (i < steps) & (n_done < exit_at) & (n_done < b)

    def body(c):
        i, cache, rows, out = c
        active = ~rows.done
        logits, new = model(rows.last[:, None], cache.index[:, None], ones, cache, layer_weights)
        tok = jnp.where(active, _pick(logits[:, 0], sp, rows.seed, rows.step, opts), -1)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        step = rows.step + active.astype(jnp.int32)
        done = rows.done | (active & (jnp.isin(tok, sp.stop_ids) | (step >= rows.budget)))
        new = _pin_cache(new._replace(index=jnp.where(active, new.index, cache.index)), layout)  # done rows stay put
        rows = _pin_rows(_Rows(jnp.where(active, tok, rows.last), step, rows.budget, rows.seed, done), layout)
        return i + 1, new, rows, _pin(out, layout and layout.replicated)

    out = jnp.full((b, steps), -1, jnp.int32)
    _, cache, rows, out = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, rows, out))
    return _pin_cache(cache, layout), _pin_rows(rows, layout), _pin(out, layout and layout.replicated)


@functools.partial(jax.jit, static_argnames=("length", "layout"))
def _resize(cache: KVCache, *, length: int, layout=None) -> KVCache:
    """The cache with its slot axis cut or zero-padded to ``length`` (callers keep every live slot below it)."""
    return _pin_cache(cache.with_length(length), layout)


@functools.partial(jax.jit, static_argnames=("layout",))
def _take_rows(cache: KVCache, rows: _Rows, idx, *, layout=None) -> tuple[KVCache, _Rows]:
    """Rows ``idx`` of the cache and state (a smaller batch)."""
    axis = 1 if not isinstance(cache.k, tuple) else 0
    k = jax.tree.map(lambda a: jnp.take(a, idx, axis=axis), cache.k)
    v = jax.tree.map(lambda a: jnp.take(a, idx, axis=axis), cache.v)
    cache = KVCache(k, v, cache.segment_ids[idx], cache.index[idx])
    return _pin_cache(cache, layout), _pin_rows(jax.tree.map(lambda a: a[idx], rows), layout)


def _empty_cache(cfg: Any, batch: int, length: int, dtype: Any, layout: DecodeLayout | None) -> KVCache:
    """A zero per-row cache, created in place on the mesh (never whole on one device)."""
    return jax.jit(lambda: _pin_cache(KVCache.zeros(cfg, batch, length, dtype, per_row=True), layout))()


class Engine:
    """Continuous-batching sampler for one model; reusable across calls (the compiled functions are cached by shape).

    ``slots``: rows decoded together. ``chunk_steps``: decode steps per device call at most (the host refills between
    calls). ``cache_dtype``: KV cache dtype (default the compute dtype; "bfloat16" halves cache memory and bytes read
    per step). ``unroll_layers``: as in `generate` (one cache buffer per layer; holds a per-layer copy of the decoder
    weights for the engine's lifetime); False keeps the layer scan and the stacked cache. ``compact``: gather the live
    rows into a smaller batch when nothing is pending and at most half the slots are live. ``min_window``: the
    smallest cache length.

    ``mesh``: a decode mesh (data, tensor; see `sharding.DECODE_RULES`) and ``rules`` its logical-axis rules (default:
    the enclosing ``nnx.logical_axis_rules``). Parameters not already placed by those rules are moved there;
    ``slots`` must divide by the data axis. Every process of a multi-process run calls `generate` with the same
    arguments and gets the same results.
    """

    def __init__(self, model: Qwen2ForCausalLM, *, slots: int = 64, chunk_steps: int = 64, cache_dtype: Any = None,
                 unroll_layers: bool = True, compact: bool = True, min_window: int = 64, mesh: Mesh | None = None,
                 rules: Rules | None = None):
        if slots < 1 or chunk_steps < 1:
            raise ValueError("slots and chunk_steps must be >= 1")
        if model.config.scan_layers != (not unroll_layers):  # auto (None) or the other choice
            model = with_config(model, scan_layers=not unroll_layers)
        self.model = model
        self.graphdef, self.params = nnx.split(model)
        self.layout = None
        if mesh is not None:
            rules = current_rules() if rules is None else rules
            self.layout = DecodeLayout.build(model.config, mesh, rules, stacked=not unroll_layers)
            if slots % self.layout.rows_multiple:
                raise ValueError(f"slots {slots} must divide by the mesh's data axis ({self.layout.rows_multiple})")
            pure = nnx.to_pure_dict(self.params)
            pure = jax.device_put(pure, param_shardings(self.params, mesh, rules))  # no copy where already placed
            nnx.replace_by_pure_dict(self.params, pure)
        self.layer_weights = (_layer_weights(self.graphdef, self.params, layout=self.layout) if unroll_layers
                              else None)
        self.slots, self.chunk_steps, self.compact, self.min_window = slots, chunk_steps, compact, min_window
        self.cache_dtype = jnp.dtype(cache_dtype or model.config.dtype)
        self.stats: dict[str, float] = {}  # the last call's: device calls, steps, rows, seconds in prefill/decode

    def _rows(self, n: int) -> int:
        """Batch size for ``n`` rows: a power of two, rounded up to a multiple of the data axis."""
        m = self.layout.rows_multiple if self.layout else 1
        return -(-bucket(n, minimum=1) // m) * m

    def _put(self, x: Any, sharding: NamedSharding | None = None) -> jax.Array:
        """A host array on the device(s): on a mesh (replicated unless ``sharding``), built from each device's slice,
        which works when the mesh spans processes (every process passes the same value)."""
        x = np.asarray(x)
        if self.layout is None:
            return jnp.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding or self.layout.replicated, lambda i: x[i])

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] = 256,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] = 0,
                 stop_ids: Sequence[int] | None = None, pad_id: int = 0,
                 on_done: Callable[[int], None] | None = None) -> list[list[int]]:
        """Like `sampler.generate` (same arguments and results, request for request), but scheduled over the slots.

        ``max_new_tokens``: one budget, or one per request. ``on_done(i)`` is called as request i finishes.
        """
        n = len(prompt_token_ids)
        if n == 0:
            return []
        if any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        budgets = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
        if len(seeds) != n or len(budgets) != n:
            raise ValueError(f"{len(seeds)} seeds and {len(budgets)} budgets for {n} prompts")
        if min(budgets) < 1:
            raise ValueError("every max_new_tokens must be >= 1")
        stops = list(DEFAULT_STOP_IDS if stop_ids is None else stop_ids) or [-2]
        stop_set = set(stops)
        put, layout = self._put, self.layout
        sp = _Sampling(put(np.asarray(stops, np.int32)), put(np.float32(temperature)), put(np.float32(top_p)),
                       put(np.int32(top_k)))
        opts = (bool(top_k > 0 or top_p < 1.0), filter_cap(top_p, top_k), temperature <= 0)
        stats: collections.Counter = collections.Counter()
        seconds: collections.Counter = collections.Counter()

        b = min(self.slots, self._rows(n))
        cfg = self.model.config
        cache = _empty_cache(cfg, b, self.min_window, self.cache_dtype, layout)
        rows = _Rows(put(np.zeros(b, np.int32)), put(np.zeros(b, np.int32)), put(np.ones(b, np.int32)),
                     put(np.zeros(b, np.uint32)), put(np.ones(b, bool)))
        slot_req = np.full(b, -1, np.int64)  # request held by each slot, -1 = free
        index = np.zeros(b, np.int64)  # host copies of each row's write slot and generated count
        step = np.zeros(b, np.int64)
        pending = collections.deque(range(n))
        keys = [tuple(int(t) for t in x) for x in prompt_token_ids]
        uses = collections.Counter(keys)  # requests not yet started, per distinct prompt
        prefilled: dict[tuple[int, ...], tuple[Any, int]] = {}  # prompt -> ((k, v, logits) of its prefill, row)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        results: list[list[int] | None] = [None] * n

        def finish(s: int) -> None:
            r = int(slot_req[s])
            ids = out_ids[r]
            if ids and ids[-1] in stop_set:
                ids.pop()
            results[r] = ids
            slot_req[s] = -1
            if on_done is not None:
                on_done(r)

        def fit(length: int, shrink: bool) -> None:
            """Grow the cache to hold ``length`` slots; with ``shrink``, also cut it when half of it would do."""
            nonlocal cache
            t = cache.segment_ids.shape[1]
            if length > t or (shrink and window_bucket(length, self.min_window) * 2 <= t):
                cache = _resize(cache, length=window_bucket(length, self.min_window), layout=layout)
                stats["resizes"] += 1

        while pending or (slot_req >= 0).any():
            # 1. Refill free slots with pending requests: prefill the prompts not yet prefilled (once per distinct
            #    prompt: the samples of a problem share it), then start each request from its prompt's rows.
            free = [s for s in range(b) if slot_req[s] < 0]
            while pending and free:
                group = [pending.popleft() for _ in range(min(len(free), len(pending)))]
                gslots, free = free[:len(group)], free[len(group):]
                t0 = time.perf_counter()
                new = list(dict.fromkeys(keys[r] for r in group if keys[r] not in prefilled))
                if new:
                    p = window_bucket(max(len(x) for x in new), 16)
                    nb = self._rows(len(new))
                    tokens = np.full((nb, p), pad_id, np.int32)
                    lens = np.ones(nb, np.int32)
                    for j, x in enumerate(new):
                        tokens[j, :len(x)], lens[j] = x, len(x)
                    seg_sharding = layout and layout.segments
                    prefill = _prefill(self.graphdef, self.params, self.layer_weights, put(tokens, seg_sharding),
                                       put(lens), kv_dtype=self.cache_dtype, layout=layout)
                    for j, x in enumerate(new):
                        prefilled[x] = (prefill, j)
                    stats["prefills"] += 1
                    stats["prefill_rows"] += len(new)
                by_prefill: dict[int, list[tuple[int, int]]] = {}
                for r, s in zip(group, gslots):
                    by_prefill.setdefault(id(prefilled[keys[r]][0]), []).append((r, s))
                for starts in by_prefill.values():
                    (k, v, logits), _ = prefilled[keys[starts[0][0]]]
                    fit(max([jax.tree.leaves(k)[0].shape[-2]] + [int(i) for i in index[slot_req >= 0]]), shrink=False)
                    m = bucket(len(starts), minimum=1)
                    src, lens, slots_arr = np.zeros(m, np.int32), np.ones(m, np.int32), np.full(m, b, np.int32)
                    seeds_arr, budgets_arr = np.zeros(m, np.uint32), np.ones(m, np.int32)
                    for j, (r, s) in enumerate(starts):
                        src[j] = prefilled[keys[r]][1]
                        lens[j], slots_arr[j], seeds_arr[j], budgets_arr[j] = len(keys[r]), s, seeds[r], budgets[r]
                    cache, rows, first, fdone = _insert(
                        cache, rows, k, v, logits, put(src), put(lens), put(slots_arr), put(seeds_arr),
                        put(budgets_arr), sp, opts=opts, layout=layout)
                    first, fdone = jax.device_get((first, fdone))
                    for j, (r, s) in enumerate(starts):
                        slot_req[s], index[s], step[s] = r, lens[j], 1
                        out_ids[r].append(int(first[j]))
                        uses[keys[r]] -= 1
                        if not uses[keys[r]]:  # no pending request needs this prompt any more
                            del prefilled[keys[r]]
                        if fdone[j]:
                            finish(s)
                            free.append(s)
                seconds["prefill"] += time.perf_counter() - t0
            live = slot_req >= 0
            if not live.any():
                continue
            # 2. Nothing left to start: gather the live rows into a smaller batch.
            if self.compact and not pending and b > 1 and live.sum() <= b // 2 and self._rows(int(live.sum())) < b:
                nb = self._rows(int(live.sum()))
                idx = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:nb]
                cache, rows = _take_rows(cache, rows, put(idx.astype(np.int32)), layout=layout)
                slot_req, index, step, b = slot_req[idx], index[idx], step[idx], nb
                live = slot_req >= 0
                stats["compactions"] += 1
            # 3. Cache long enough for every live row's next chunk (and no longer than needed).
            need = [int(index[s]) + min(self.chunk_steps, budgets[slot_req[s]] - int(step[s]))
                    for s in np.flatnonzero(live)]
            fit(max(need), shrink=True)
            # 4. Decode until enough rows stopped to refill (or to compact), or chunk_steps.
            if pending:
                exit_at = 1
            elif self.compact and b > 1:
                exit_at = b - b // 2
            else:
                exit_at = b
            t0 = time.perf_counter()
            cache, rows, out = _decode(self.graphdef, self.params, self.layer_weights, cache, rows, sp,
                                       put(np.int32(exit_at)), steps=self.chunk_steps, opts=opts, layout=layout)
            out, done, idx_d, step_d = jax.device_get((out, rows.done, cache.index, rows.step))
            seconds["decode"] += time.perf_counter() - t0
            stats["decode_calls"] += 1
            ran = int((out >= 0).any(axis=0).sum())
            stats["decode_steps"] += ran
            stats["row_steps"] += ran * b  # slots carried, live or not
            stats["useful_row_steps"] += int((out >= 0).sum())
            index, step = idx_d.astype(np.int64), step_d.astype(np.int64)
            for s in np.flatnonzero(live):
                toks = out[s]
                out_ids[slot_req[s]].extend(int(t) for t in toks[toks >= 0])
                if done[s]:
                    finish(s)
        self.stats = dict(stats) | {f"{k}_s": round(v, 3) for k, v in seconds.items()}
        return [r if r is not None else [] for r in results]


def generate_continuous(model: Qwen2ForCausalLM, prompt_token_ids: Sequence[Sequence[int]],
                        max_new_tokens: int | Sequence[int] = 256, temperature: float = 0.0, top_p: float = 1.0,
                        top_k: int = 0, seed: int | Sequence[int] = 0, stop_ids: Sequence[int] | None = None,
                        pad_id: int = 0, *, slots: int = 64, chunk_steps: int = 64, cache_dtype: Any = None,
                        unroll_layers: bool = True, compact: bool = True,
                        on_done: Callable[[int], None] | None = None) -> list[list[int]]:
    """One-call form of :class:`Engine` (`sampler.generate`'s signature plus the engine's options)."""
    engine = Engine(model, slots=slots, chunk_steps=chunk_steps, cache_dtype=cache_dtype, unroll_layers=unroll_layers,
                    compact=compact)
    return engine.generate(prompt_token_ids, max_new_tokens, temperature, top_p, top_k, seed, stop_ids, pad_id,
                           on_done=on_done)


def abstract_engine_steps(model_cfg: Any, mesh: Mesh, rules: Rules, *, slots: int, cache_len: int,
                          prompt_len: int = 512, chunk_steps: int = 64, cache_dtype: Any = "bfloat16",
                          unroll_layers: bool = True, top_p: float = 0.95, temperature: float = 0.6,
                          ) -> dict[str, tuple[Any, tuple, dict]]:
    """The engine's own jitted pieces with abstract, sharded arguments (nothing allocated), for AOT plans:
    ``{"decode": (fn, args, kwargs), "prefill": (...)}``. decode: one chunk of ``chunk_steps`` steps over ``slots``
    rows with a ``cache_len``-slot KV cache (the cache's largest length bucket: prompt + budget); prefill: ``slots``
    prompts of ``prompt_len`` tokens at once (every slot refilled together, as at the start of a run). Weights in
    ``model_cfg``'s dtype (plans pass bfloat16), laid out as `Engine` lays them out (with ``unroll_layers`` also the
    per-layer copy the engine keeps)."""
    import dataclasses

    from jax_distill.model.qwen2 import init_model

    cfg = dataclasses.replace(model_cfg.resolve(), scan_layers=not unroll_layers)
    layout = DecodeLayout.build(cfg, mesh, rules, stacked=not unroll_layers)
    if slots % layout.rows_multiple:
        raise ValueError(f"slots {slots} must divide by the mesh's data axis ({layout.rows_multiple})")
    model = nnx.eval_shape(lambda: init_model(cfg))
    graphdef, state = nnx.split(model)

    def sds(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)

    params = jax.tree.map(lambda v, s: sds(v.shape, v.dtype, s), nnx.to_pure_dict(state),
                          param_shardings(state, mesh, rules))
    layer_weights = None
    if unroll_layers:
        one = {k: sds(v.shape[1:], v.dtype, named_sharding(mesh, LAYER_AXES[k][1:], v.shape[1:], k, rules))
               for k, v in params["layers"].items()}
        layer_weights = [dict(one) for _ in range(cfg.num_hidden_layers)]
    kv_shape = (slots, cfg.num_key_value_heads, cache_len, cfg.head_dim)
    if unroll_layers:
        kv = tuple(sds(kv_shape, cache_dtype, layout.kv) for _ in range(cfg.num_hidden_layers))
    else:
        kv = sds((cfg.num_hidden_layers,) + kv_shape, cache_dtype, layout.kv)
    rep = layout.replicated
    cache = KVCache(kv, kv, sds((slots, cache_len), jnp.int32, layout.segments), sds((slots,), jnp.int32, rep))
    rows = _Rows(*(sds((slots,), dt, rep) for dt in (jnp.int32, jnp.int32, jnp.int32, jnp.uint32, jnp.bool_)))
    sp = _Sampling(sds((2,), jnp.int32, rep), sds((), jnp.float32, rep), sds((), jnp.float32, rep),
                   sds((), jnp.int32, rep))
    opts = (top_p < 1.0, filter_cap(top_p, 0), temperature <= 0)
    decode = (_decode, (graphdef, params, layer_weights, cache, rows, sp, sds((), jnp.int32, rep)),
              {"steps": chunk_steps, "opts": opts, "layout": layout})
    prefill = (_prefill, (graphdef, params, layer_weights, sds((slots, prompt_len), jnp.int32, layout.segments),
                          sds((slots,), jnp.int32, rep)), {"kv_dtype": jnp.dtype(cache_dtype), "layout": layout})
    return {"decode": decode, "prefill": prefill}
