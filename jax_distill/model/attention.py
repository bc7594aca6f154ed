"""Attention behind one function, :func:`attention`, with one mask rule for every implementation.

Masks are built from segment ids and slot indices, so one rule covers causal training, packed rows (several
documents per row) and decoding against a KV cache: key j is visible to query i iff both belong to the same
non-padding document (segment id > 0) and j's slot is not after i's.

Implementations (``model.attention``):

- ``xla``: the reference. Dense ``[B, H, S, S]`` scores; any mask (training and the decode cache).
- ``chunked``: block-causal flash attention in plain JAX (any backend; the CPU and portable choice). Key blocks
  wholly above the diagonal, or holding only earlier documents of a packed row, are never computed; online softmax over ``[block, block]`` tiles, a hand-written
  backward pass that recomputes each tile, so memory is O(S x block). Lengths that are not a multiple of the
  block are padded (padded keys masked, padded queries dropped).
- ``splash``: TPU. `jax.experimental.pallas.ops.tpu.splash_attention` (a Mosaic kernel) with a causal mask and
  the rows' segment ids, run per device under `jax.shard_map` (batch over the data axes, heads over ``tensor``):
  Mosaic kernels cannot be partitioned by the compiler.
- ``cudnn``: GPU. cuDNN flash attention with its own causal + packed-sequence ("THD", ragged offsets) masking:
  each row's documents are passed as (offset, length) runs, never as a dense mask or bias. bf16/fp16 only.
- ``dot_product``: `jax.nn.dot_product_attention` with the dense boolean mask (XLA's implementation).

``chunked``, ``splash`` and ``cudnn`` take the training mask (a :class:`MaskSpec` of self-attention in row order:
slot = index) and output zeros at padding queries (segment id 0); the reference gives those rows a uniform
softmax. No implementation silently falls back to another.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jax_distill.sharding import constrain

# Finite (not -inf) so that a fully masked row (a padding query) gives a uniform softmax instead of NaNs.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

# What each implementation is for; `attention()` dispatches on these names.
IMPLEMENTATIONS = ("xla", "chunked", "splash", "cudnn", "dot_product")


def make_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_slots: jax.Array, kv_slots: jax.Array) -> jax.Array:
    """Boolean attention mask.

    Args: q_segment_ids int32 [B, Sq]; kv_segment_ids int32 [B, Sk] (0 = padding / empty cache slot);
      q_slots int32 [Sq] or [B, Sq]; kv_slots int32 [Sk] (row-local order used for causality).
    Returns: bool [B, 1, Sq, Sk] (broadcast over heads).
    """
    q_slots = jnp.broadcast_to(q_slots, q_segment_ids.shape)
    same_doc = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_slots[None, None, :] <= q_slots[:, :, None]
    valid = (kv_segment_ids != 0)[:, None, :]
    return (same_doc & causal & valid)[:, None, :, :]


class MaskSpec(NamedTuple):
    """What decides visibility, without the dense [B, 1, Sq, Sk] mask (17 GB of booleans for 64 rows of 16k).

    The block implementations (``chunked``, ``splash``, ``cudnn``) read only the segment ids: they are for
    training-style self-attention, where the slots are the row indices 0..S-1 (what the model passes)."""

    q_segment_ids: jax.Array  # [B, Sq]
    kv_segment_ids: jax.Array  # [B, Sk]
    q_slots: jax.Array  # [Sq] or [B, Sq]
    kv_slots: jax.Array  # [Sk]

    def dense(self) -> jax.Array:
        return make_mask(*self)


# ----------------------------------------------------------------------------------------------------------------
# xla: the reference


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Reference grouped-query attention; softmax in float32.

    q [B, Sq, H, D]; k, v [B, Sk, K, D] with H % K == 0; mask bool [B, 1, Sq, Sk]. Returns [B, Sq, H, D] in q.dtype.
    The same computation as :func:`cache_attention`, keys and values brought to its heads-major layout.
    """
    return cache_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)


def cache_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of new queries over a KV cache stored heads-major; softmax in float32.

    q [B, Sq, H, D]; k, v [B, K, T, D] (the cache layout: each head's keys contiguous, so the score and value
    contractions read the cache as it lies instead of transposing all of it every step); mask bool [B, 1, Sq, T].
    Returns [B, Sq, H, D] in q.dtype."""
    b, sq, h, d = q.shape
    kh = k.shape[1]
    # [B, K, G*Sq, D]: each kv head's queries as one matrix, so both contractions are plain batched matmuls
    qg = q.reshape(b, sq, kh, h // kh, d).transpose(0, 2, 3, 1, 4).reshape(b, kh, h // kh * sq, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", qg, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = scores.reshape(b, kh, h // kh, sq, -1)
    scores = jnp.where(mask[:, :, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kh, h // kh * sq, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, kh, h // kh, sq, d).transpose(0, 3, 1, 2, 4).reshape(b, sq, h, d).astype(q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# chunked: block-causal flash attention in plain JAX

# Block size of ``chunked``; None = per backend (see block_layout): 1024 on GPU (faster than 512 at 16k on H100 and
# H200), 256 on CPU, else 512. Any block gives the same result (docs/benchmarks.md).
CHUNK_BLOCK: int | None = None


def block_layout(seq_len: int, block: int | None = None) -> tuple[int, int]:
    """(block, padded length) for ``chunked``: as few blocks of at most ``block`` as cover ``seq_len``, each a
    multiple of 8, so that padding is under 8 tokens per block instead of up to a whole block."""
    # Per backend, measured: on CPU 256-token tiles beat 512 by 16-45% (fwd + bwd at 512-4096 tokens, bench-small
    # heads) and 128 or 192; GPUs want larger tiles.
    block = block or CHUNK_BLOCK or {"gpu": 1024, "cpu": 256}.get(jax.default_backend(), 512)
    n = -(-seq_len // block)
    blk = -(-seq_len // n)
    blk = -(-blk // 8) * 8 if blk > 8 else blk
    return blk, n * blk


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, chunk: int | None = None) -> jax.Array:
    """Block-causal attention for packed causal training, O(S x block) memory, any backend.

    Query block i visits key blocks 0..i only (never one wholly above the diagonal, nor one holding only earlier
    documents of a packed row) with a flash-style online softmax; the backward pass (custom VJP) keeps only the
    output and the per-query log-sum-exp and recomputes each [block, block] tile, key block by key block. Scores and
    softmax in float32. Sequences that are not a multiple of the block are padded with segment id 0 (masked keys;
    padded query rows are dropped). Padding queries (segment 0) output zeros. Shapes as in :func:`xla_attention`;
    ``chunk``: block size (default :data:`CHUNK_BLOCK`, else 256 on CPU, 1024 on GPU, 512 elsewhere)."""
    b, s, h, d = q.shape
    if k.shape[1] != s:
        raise ValueError(f"attention 'chunked' is causal self-attention: {s} queries over {k.shape[1]} keys; "
                         "use 'xla' (cache_attention) for decoding")
    blk, sp = block_layout(s, chunk)
    seg = mask.q_segment_ids.astype(jnp.int32)
    if sp != s:
        pad = ((0, 0), (0, sp - s), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
        seg = jnp.pad(seg, ((0, 0), (0, sp - s)))
    return _flash(q, k, v, seg, blk)[:, :s]


def _q_blocks(x: jax.Array, blk: int, kh: int) -> jax.Array:
    """[B, S, H, ...] -> [n, B, K, G*blk, ...]: query block i of each kv head as one matrix (its G heads stacked)."""
    b, s, h = x.shape[:3]
    rest = x.shape[3:]
    g, n = h // kh, s // blk
    x = x.reshape(b, n, blk, kh, g, *rest)
    x = jnp.moveaxis(x, (1, 3, 4), (0, 2, 3))  # [n, B, K, G, blk, ...]
    return x.reshape(n, b, kh, g * blk, *rest)


def _from_q_blocks(x: jax.Array, b: int, h: int) -> jax.Array:
    """Inverse of :func:`_q_blocks`: [n, B, K, G*blk, D] -> [B, S, H, D]."""
    n, _, kh, gb, d = x.shape
    g = h // kh
    blk = gb // g
    x = x.reshape(n, b, kh, g, blk, d)
    return jnp.moveaxis(x, (0, 2, 3), (1, 3, 4)).reshape(b, n * blk, h, d)


def _kv_blocks(x: jax.Array, blk: int) -> jax.Array:
    """[B, S, K, D] -> [n, B, K, blk, D]."""
    b, s, kh, d = x.shape
    return x.reshape(b, s // blk, blk, kh, d).transpose(1, 0, 3, 2, 4)


def _from_kv_blocks(x: jax.Array) -> jax.Array:
    n, b, kh, blk, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * blk, kh, d)


def _blocked(x: jax.Array) -> jax.Array:
    """Blocked [n, B, K, rows, D] activations keep the batch and head sharding of their source."""
    return constrain(x, (None, "batch", "act_heads", None, None))


def _tile_mask(seg_q: jax.Array, seg_k: jax.Array, i, j, blk: int, g: int) -> jax.Array:
    """Visibility in tile (query block i, key block j): bool [B, 1, G*blk, blk]. seg_q [B, G*blk] (the block's
    segment ids repeated for its G heads), seg_k [B, blk]."""
    q_pos = i * blk + jnp.tile(jnp.arange(blk, dtype=jnp.int32), g)
    k_pos = j * blk + jnp.arange(blk, dtype=jnp.int32)
    visible = (seg_q[:, :, None] == seg_k[:, None, :]) & (k_pos[None, None, :] <= q_pos[None, :, None])
    return (visible & (seg_k != 0)[:, None, :])[:, None]


def _segment_blocks(seg: jax.Array, blk: int, g: int) -> tuple[jax.Array, jax.Array]:
    """Segment ids per query block (repeated for the G heads of a kv head) [n, B, G*blk], per key block [n, B, blk]."""
    b, s = seg.shape
    seg_k = seg.reshape(b, s // blk, blk).transpose(1, 0, 2)
    return jnp.tile(seg_k, (1, 1, g)), seg_k


def _first_key_blocks(seg: jax.Array, blk: int) -> jax.Array:
    """For each query block, the first key block that any of its queries can see: int32 [n]. Key blocks before it
    hold only other documents (packed rows), so they are skipped like those above the diagonal; a block of padding
    queries sees none (n). Computed from the first occurrence of each segment id; ids outside [0, S] turn the
    skipping off (0: every block up to the diagonal is visited, still exact)."""
    b, s = seg.shape
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    ids = jnp.clip(seg, 0, s)
    first_of_id = jnp.full((b, s + 1), s, jnp.int32).at[jnp.arange(b)[:, None], ids].min(pos)
    first = jnp.where(seg > 0, jnp.take_along_axis(first_of_id, ids, axis=1), s)
    start = first.reshape(b, s // blk, blk).min(axis=(0, 2)) // blk
    return jnp.where((seg.min() >= 0) & (seg.max() <= s), start, 0).astype(jnp.int32)


def _unmasked_tiles(seg: jax.Array, blk: int) -> jax.Array:
    """bool [n, n]: tile (query block i, key block j) has every key visible to every query, in every row, so it needs
    no mask: j < i (below the diagonal) and, in each row, both blocks lie in one and the same document. True for all
    but the diagonal in unpacked rows; around each document boundary in packed ones."""
    b, s = seg.shape
    blocks = seg.reshape(b, s // blk, blk)
    lo, hi = blocks.min(-1), blocks.max(-1)
    doc = jnp.where((lo == hi) & (lo > 0), lo, -1)  # [B, n]: the block's one document, or -1
    same = jnp.all((doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] > 0), axis=0)
    n = s // blk
    return same & (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])


def _unmasked_runs(seg: jax.Array, blk: int, first: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(lo [n], hi [n]) int32: for query block i, key blocks lo[i]..i-1 are unmasked tiles (forward); for key block
    j, query blocks j+1..hi[j]-1 are (backward). Each is the contiguous run next to the diagonal; tiles outside it
    keep the mask (and the skip of wholly invisible blocks)."""
    free = _unmasked_tiles(seg, blk)
    n = free.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    below = idx[None, :] < idx[:, None]  # [i, j]: j < i
    lo = jnp.max(jnp.where(below & ~free, idx[None, :] + 1, 0), axis=1)
    lo = jnp.clip(jnp.maximum(lo, first), 0, idx)
    hi = jnp.min(jnp.where(below & ~free, idx[:, None], n), axis=0)
    return lo.astype(jnp.int32), jnp.maximum(hi, idx + 1).astype(jnp.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, blk):
    return _flash_fwd(q, k, v, seg, blk)[0]


def _flash_fwd(q, k, v, seg, blk):
    b, s, h, d = q.shape
    kh = k.shape[2]
    g, n = h // kh, s // blk
    qb = _blocked(_q_blocks(q * jnp.asarray(d**-0.5, q.dtype), blk, kh))  # [n, B, K, G*blk, D]
    # keys transposed, [n, B, K, D, blk]: the score product is then a plain [rows, D] x [D, blk] matmul
    kb_t, vb = _blocked(jnp.swapaxes(_kv_blocks(k, blk), -1, -2)), _blocked(_kv_blocks(v, blk))
    seg_q, seg_k = _segment_blocks(seg, blk, g)
    first = _first_key_blocks(seg, blk)
    lo, _ = _unmasked_runs(seg, blk, first)

    def query_block(i):
        qi, sq = qb[i], seg_q[i]

        def key_block(j, carry, masked=True):
            m, l, acc = carry
            scores = jnp.einsum("bkqd,bkds->bkqs", qi, kb_t[j], preferred_element_type=jnp.float32)
            if masked:
                visible = _tile_mask(sq, seg_k[j], i, j, blk, g)
                m_new = jnp.maximum(m, jnp.where(visible, scores, _MASK_VALUE).max(-1))
                p = jnp.where(visible, jnp.exp(scores - m_new[..., None]), 0.0)
            else:
                m_new = jnp.maximum(m, scores.max(-1))
                p = jnp.exp(scores - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v.dtype), vb[j], preferred_element_type=jnp.float32)
            return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

        init = (jnp.full(qi.shape[:-1], _MASK_VALUE, jnp.float32), jnp.zeros(qi.shape[:-1], jnp.float32),
                jnp.zeros(qi.shape, jnp.float32))
        # Key blocks first[i]..i: none above the diagonal, none wholly in earlier documents. Those in lo[i]..i-1
        # are visible whole and skip the mask's elementwise work (on CPU about half a tile's time besides its two
        # products); the diagonal tile and blocks before lo[i] keep it.
        start = jnp.minimum(first[i], i + 1)
        carry = lax.fori_loop(start, jnp.maximum(lo[i], start), key_block, init)
        carry = lax.fori_loop(jnp.maximum(lo[i], start), i, functools.partial(key_block, masked=False), carry)
        m, l, acc = lax.cond(i >= start, key_block, lambda j, c: c, i, carry)
        seen = l > 0  # false only for a query that sees no key (padding): output 0, no gradient
        safe = jnp.where(seen, l, 1.0)
        return (acc / safe[..., None]).astype(q.dtype), jnp.where(seen, m + jnp.log(safe), jnp.inf)

    out, lse = lax.map(query_block, jnp.arange(n))
    out = _from_q_blocks(out, b, h)
    return out, (q, k, v, seg, out, lse)


def _flash_bwd(blk, res, dout):
    q, k, v, seg, out, lse = res
    b, s, h, d = q.shape
    kh = k.shape[2]
    g, n = h // kh, s // blk
    scale = d**-0.5
    qb = _blocked(_q_blocks(q * jnp.asarray(scale, q.dtype), blk, kh))
    dob = _blocked(_q_blocks(dout, blk, kh))
    # rowsum(dout * out) over tokens flattened to one axis (see qwen2.rms_norm: [1, S, ...] reduces are slow on CPU)
    delta = jnp.sum((dout.astype(jnp.float32) * out.astype(jnp.float32)).reshape(b * s, h, d), -1)
    delta = _q_blocks(delta.reshape(b, s, h), blk, kh)  # [n, B, K, G*blk]
    kb, vb = _blocked(_kv_blocks(k, blk)), _blocked(_kv_blocks(v, blk))
    seg_q, seg_k = _segment_blocks(seg, blk, g)
    first = _first_key_blocks(seg, blk)
    _, hi = _unmasked_runs(seg, blk, first)

    def key_block(dq, j):
        kj, vj = kb[j], vb[j]

        def tile(i, carry, masked=True):
            # The tile transposed ([key, query] rows): the dv and dk products then contract over queries as plain
            # matmuls (XLA:CPU runs a product that contracts the leading axis of both operands at half speed).
            dq, dk, dv = carry
            qi, doi = qb[i], dob[i]
            scores_t = jnp.einsum("bksd,bkqd->bksq", kj, qi, preferred_element_type=jnp.float32)
            p_t = jnp.exp(scores_t - lse[i][..., None, :])
            if masked:
                p_t = jnp.where(jnp.swapaxes(_tile_mask(seg_q[i], seg_k[j], i, j, blk, g), -1, -2), p_t, 0.0)
            dv = dv + jnp.einsum("bksq,bkqd->bksd", p_t.astype(dout.dtype), doi, preferred_element_type=jnp.float32)
            dp_t = jnp.einsum("bksd,bkqd->bksq", vj, doi, preferred_element_type=jnp.float32)
            ds_t = (p_t * (dp_t - delta[i][..., None, :])).astype(q.dtype)
            dk = dk + jnp.einsum("bksq,bkqd->bksd", ds_t, qi, preferred_element_type=jnp.float32)
            # dq is accumulated transposed, [.., D, rows]: the same product with a [D, rows] output runs ~2.5x
            # faster on XLA:CPU than with [rows, D] (whose operands it reads transposed); one transpose at the end.
            dq = dq.at[i].add(jnp.einsum("bksd,bksq->bkdq", kj, ds_t, preferred_element_type=jnp.float32))
            return dq, dk, dv

        def query_block(i, carry):  # exactly the tiles the forward pass visited
            return lax.cond(j >= first[i], tile, lambda i, c: c, i, carry)

        zero = jnp.zeros(kj.shape, jnp.float32)
        # query blocks j..n-1 (on or below the diagonal); j+1..hi[j]-1 are the unmasked tiles of the forward pass
        carry = query_block(j, (dq, zero, zero))
        carry = lax.fori_loop(j + 1, hi[j], functools.partial(tile, masked=False), carry)
        dq, dk, dv = lax.fori_loop(hi[j], n, query_block, carry)
        return dq, (dk, dv)

    dq_t = jnp.zeros(jnp.swapaxes(qb, -1, -2).shape, jnp.float32)  # [n, B, K, D, G*blk]
    dq_t, (dk, dv) = lax.scan(key_block, dq_t, jnp.arange(n))
    dq = (_from_q_blocks(jnp.swapaxes(dq_t, -1, -2), b, h) * scale).astype(q.dtype)
    return dq, _from_kv_blocks(dk).astype(k.dtype), _from_kv_blocks(dv).astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------------------------------
# splash: TPU Pallas kernel under shard_map

# Mesh axes (sharding.py's names): the batch is split over the data-parallel axes, heads over tensor.
_BATCH_AXES = ("data", "fsdp")
_HEAD_AXIS = "tensor"


def splash_block_sizes(seq_len: int):
    """Splash tile sizes for a (128-padded) sequence length: 512-query blocks, 1024-key blocks computed 512 at a time
    where the length allows (the usual v5p/v6e choice for head_dim 128), the same tiles for both backward kernels."""
    from jax.experimental.pallas.ops.tpu.splash_attention import BlockSizes

    def largest(options):
        return next(o for o in options if seq_len % o == 0)

    bq = largest((512, 256, 128))
    bkv = largest((1024, 512, 256, 128))
    bkv_compute = min(bkv, 512)
    return BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv_compute,
                      block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv_compute,
                      block_q_dq=bq, block_kv_dq=bkv)


@functools.lru_cache(maxsize=32)
def _splash_kernel(seq_len: int, heads: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len)) for _ in range(heads)])
    return sa.make_splash_mha(mask, block_sizes=splash_block_sizes(seq_len), head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q, k, v, seg, interpret: bool):
    """Splash on this device's rows and heads: q [b, H, S, D] (already scaled), k, v [b, K, S, D], seg [b, S]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _splash_kernel(q.shape[2], q.shape[1], interpret)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=SegmentIds(s1, s1)))(q, k, v, seg)
    return jnp.where((seg > 0)[:, None, :, None], out, 0).astype(q.dtype)


def splash_mesh_split(mesh, batch: int, heads: int, kv_heads: int):
    """(batch mesh axes, head mesh axis or None, kv repeat factor) for shard_map on ``mesh``: the data axes that
    divide the batch; ``tensor`` over heads when it divides them, repeating kv heads when it does not divide those
    (e.g. 4 kv heads on tensor=8)."""
    names = set(mesh.axis_names)
    batch_axes, size = [], 1
    for a in _BATCH_AXES:
        if a in names and mesh.shape[a] > 1 and batch % (size * mesh.shape[a]) == 0:
            batch_axes.append(a)
            size *= mesh.shape[a]
    t = mesh.shape[_HEAD_AXIS] if _HEAD_AXIS in names else 1
    if t == 1 or heads % t:
        return tuple(batch_axes), None, 1
    rep = 1 if kv_heads % t == 0 else t // math.gcd(kv_heads, t)
    if (heads // kv_heads) % rep:
        return tuple(batch_axes), None, 1
    return tuple(batch_axes), _HEAD_AXIS, rep


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, *, interpret: bool = False) -> jax.Array:
    """TPU splash attention (causal + segment ids) for packed causal training. Shapes as in :func:`xla_attention`.

    The Pallas/Mosaic kernel runs per device under `jax.shard_map` over the mesh in context
    (`jax.sharding.get_abstract_mesh()`, i.e. the step is traced under ``jax.set_mesh``): rows split over the
    ``data``/``fsdp`` axes, heads over ``tensor``. With no mesh in context it runs as one program (one device, or
    ``interpret=True`` on CPU for tests). The length is padded to a multiple of 128 (padded keys get their own
    segment id 0, so real tokens never see them). Padding queries (segment 0) output zeros."""
    b, s, h, d = q.shape
    kh = k.shape[2]
    if k.shape[1] != s:
        raise ValueError(f"attention 'splash' is causal self-attention: {s} queries over {k.shape[1]} keys")
    sp = -(-s // 128) * 128
    seg = mask.q_segment_ids.astype(jnp.int32)
    qt = (q * jnp.asarray(d**-0.5, q.dtype)).transpose(0, 2, 1, 3)  # the kernel does not scale
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if sp != s:
        pad = ((0, 0), (0, 0), (0, sp - s), (0, 0))
        qt, kt, vt = jnp.pad(qt, pad), jnp.pad(kt, pad), jnp.pad(vt, pad)
        seg = jnp.pad(seg, ((0, 0), (0, sp - s)))
    mesh = jax.sharding.get_abstract_mesh()
    run = functools.partial(_splash_local, interpret=interpret)
    if mesh is None or mesh.empty or mesh.size == 1:
        out = run(qt, kt, vt, seg)
    else:
        from jax.sharding import PartitionSpec as P

        batch_axes, head_axis, rep = splash_mesh_split(mesh, b, h, kh)
        if rep > 1:
            kt, vt = jnp.repeat(kt, rep, axis=1), jnp.repeat(vt, rep, axis=1)
        bspec = batch_axes or None
        qspec = P(bspec, head_axis, None, None)
        out = jax.shard_map(run, mesh=mesh, in_specs=(qspec, qspec, qspec, P(bspec, None)), out_specs=qspec,
                            check_vma=False)(qt, kt, vt, seg)
    return out[:, :, :s].transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------------------------------------------
# cudnn: GPU flash attention, packed rows as ragged runs


@contextlib.contextmanager
def cudnn_target(compute_capability: str):
    """Trace "cudnn" attention for a GPU generation other than the local one (ahead-of-time compiles from a CPU host).

    jax's cuDNN wrapper checks the GPU generation by asking the default backend for its first device (packed runs
    need Hopper, 9.0); a CPU host has none, so the check fails even when compiling for H100 target specs. Inside
    this context the check answers for ``compute_capability`` (e.g. "9.0") instead."""
    import jax._src.cudnn.fused_attention_stablehlo as fa

    target = tuple(int(x) for x in compute_capability.split("."))
    saved = fa.check_compute_capability, fa.is_cuda_compute_capability_equal
    fa.check_compute_capability = lambda cap: target >= tuple(int(x) for x in cap.split("."))
    fa.is_cuda_compute_capability_equal = lambda cap: target == tuple(int(x) for x in cap.split("."))
    try:
        yield
    finally:
        fa.check_compute_capability, fa.is_cuda_compute_capability_equal = saved


class SegmentRuns(NamedTuple):
    """A packed row as cuDNN's ragged ("THD") layout wants it: the runs of equal segment id, left-aligned, padded
    with -1 (the form of ``jax._src.cudnn.fused_attention_stablehlo.dot_product_attention``'s q_seqlen/q_offsets).
    Padding (segment 0) is a run of its own, so every token is covered and gets a written output and gradient."""

    lengths: jax.Array  # int32 [B, M]: run lengths, -1 past the row's last run
    offsets: jax.Array  # int32 [B, M + 1]: run starts, -1 past the row's last run
    count: jax.Array  # int32 [B]: runs in the row (rows with more than M are poisoned, see cudnn_attention)


def segment_runs(segment_ids: jax.Array, max_segments: int) -> SegmentRuns:
    """Runs of equal segment id in each row of ``segment_ids`` [B, S] (packed rows keep documents contiguous)."""
    b, s = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    count = starts.sum(1).astype(jnp.int32)

    def row(flags):
        first = jnp.nonzero(flags, size=max_segments + 1, fill_value=s)[0].astype(jnp.int32)  # run starts, then s
        lengths = first[1:] - first[:-1]
        n = jnp.arange(max_segments + 1)
        valid = n < jnp.minimum(flags.sum(), max_segments)
        return jnp.where(valid[:-1], lengths, -1), jnp.where(valid, first, -1)

    lengths, offsets = jax.vmap(row)(starts)
    return SegmentRuns(lengths, offsets, count)


def runs_mask(runs: SegmentRuns, seq_len: int) -> jax.Array:
    """The mask cuDNN applies for ``runs`` with PADDING_CAUSAL: query i sees key j iff both lie in the same run and
    j <= i. bool [B, 1, S, S]; for tests (it is what :func:`make_mask` gives, on the real tokens)."""
    pos = jnp.arange(seq_len)
    starts = jnp.where(runs.offsets[:, :-1] >= 0, runs.offsets[:, :-1], seq_len + 1)
    ends = jnp.where(runs.lengths >= 0, starts + runs.lengths, seq_len + 1)
    run_of = jnp.argmax((pos[None, :, None] >= starts[:, None, :]) & (pos[None, :, None] < ends[:, None, :]), axis=-1)
    covered = jnp.any((pos[None, :, None] >= starts[:, None, :]) & (pos[None, :, None] < ends[:, None, :]), axis=-1)
    same = (run_of[:, :, None] == run_of[:, None, :]) & covered[:, :, None] & covered[:, None, :]
    return (same & (pos[None, None, :] <= pos[None, :, None]))[:, None]


DEFAULT_MAX_SEGMENTS = 16


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, *,
                    max_segments: int = DEFAULT_MAX_SEGMENTS) -> jax.Array:
    """cuDNN flash attention (GPU, bf16/fp16) for packed causal training. Shapes as in :func:`xla_attention`.

    Causality and document boundaries are cuDNN's own PADDING_CAUSAL mask over ragged runs (:func:`segment_runs`):
    no [S, S] mask or bias exists. ``max_segments`` is the most runs (documents, plus one for trailing padding)
    a row may hold; a row with more cannot be described and its output is NaN, so the loss fails loudly instead
    of attending across documents. ``max_segments=1``: rows hold one document each with padding only at the end,
    plain causal. Padding queries (segment 0) output zeros."""
    b, s, h, d = q.shape
    if k.shape[1] != s:
        raise ValueError(f"attention 'cudnn' is causal self-attention: {s} queries over {k.shape[1]} keys")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention 'cudnn' needs bfloat16 or float16 activations, got {q.dtype}: set "
                         "model.dtype: bfloat16 (or use attention 'chunked')")
    seg = mask.q_segment_ids
    if max_segments == 1:
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    else:
        try:
            from jax._src.cudnn.fused_attention_stablehlo import MaskType
            from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_dpa
        except ImportError as err:  # a private module: name the version we were written against
            raise ImportError("attention 'cudnn' uses jax._src.cudnn.fused_attention_stablehlo (jax 0.10/0.11); "
                              f"not importable in jax {jax.__version__}") from err
        runs = segment_runs(seg, max_segments)
        out = cudnn_dpa(q, k, v, q_seqlen=runs.lengths, kv_seqlen=runs.lengths, q_offsets=runs.offsets,
                        kv_offsets=runs.offsets, scale=d**-0.5, mask_type=MaskType.PADDING_CAUSAL,
                        qkv_layout="BTNH")
        out = jnp.where((seg > 0)[:, :, None, None], out, 0)
        return jnp.where((runs.count > max_segments)[:, None, None, None], jnp.nan, out).astype(q.dtype)
    return jnp.where((seg > 0)[:, :, None, None], out, 0).astype(q.dtype)


# ----------------------------------------------------------------------------------------------------------------


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec | jax.Array, impl: str = "xla", *,
              max_segments: int = DEFAULT_MAX_SEGMENTS) -> jax.Array:
    """Dispatch on ``impl`` (see the module docstring): "xla", "chunked", "splash", "cudnn", "dot_product".
    Shapes as in :func:`xla_attention`; ``mask`` a :class:`MaskSpec` (training) or a dense bool mask ("xla" and
    "dot_product" only). ``max_segments``: documents per packed row for "cudnn"."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r} ({', '.join(IMPLEMENTATIONS)})")
    if impl in ("chunked", "splash", "cudnn"):
        if not isinstance(mask, MaskSpec):
            raise ValueError(f"attention {impl!r} takes the training MaskSpec (segment ids), not a dense mask")
        if impl == "chunked":
            return chunked_attention(q, k, v, mask)
        if impl == "splash":
            return splash_attention(q, k, v, mask)
        return cudnn_attention(q, k, v, mask, max_segments=max_segments)
    if isinstance(mask, MaskSpec):
        mask = mask.dense()
    if impl == "xla":
        return xla_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)
