"""Attention behind one function: an XLA reference and `jax.nn.dot_product_attention` (cuDNN on GPU).

Masks are built from segment ids and slot indices, so one rule covers causal training, packed rows (several
documents per row) and decoding against a KV cache: key j is visible to query i iff both belong to the same
non-padding document (segment id > 0) and j's slot is not after i's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_distill.sharding import constrain

# Finite (not -inf) so that a fully masked row (a padding query) gives a uniform softmax instead of NaNs.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


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
    """What decides visibility, without the dense [B, 1, Sq, Sk] mask (17 GB of booleans for 64 rows of 16k): the
    chunked implementation builds only each query chunk's slice of it."""

    q_segment_ids: jax.Array  # [B, Sq]
    kv_segment_ids: jax.Array  # [B, Sk]
    q_slots: jax.Array  # [Sq] or [B, Sq]
    kv_slots: jax.Array  # [Sk]

    def dense(self) -> jax.Array:
        return make_mask(*self)


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


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, chunk: int = 1024) -> jax.Array:
    """Memory-efficient attention for long sequences: queries in chunks, each chunk's mask built on the fly and the
    chunk rematerialised in the backward pass, so the live score tensor is [B, H, chunk, Sk] instead of
    [B, H, Sq, Sk] (16k x 16k x 64 heads in fp32 would be 64 GiB per sequence). Same maths as
    :func:`xla_attention`; shapes as there."""
    b, sq, h, d = q.shape
    if sq <= chunk or sq % chunk:
        return xla_attention(q, k, v, mask.dense())
    n = sq // chunk
    qs = q.reshape(b, n, chunk, h, d).swapaxes(0, 1)
    segs = mask.q_segment_ids.reshape(b, n, chunk).swapaxes(0, 1)
    slots = jnp.broadcast_to(mask.q_slots, mask.q_segment_ids.shape).reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(args):
        qc, seg_c, slot_c = args
        qc = constrain(qc, ("batch", None, "act_heads", None))
        mc = make_mask(seg_c, mask.kv_segment_ids, slot_c, mask.kv_slots)
        return constrain(xla_attention(qc, k, v, mc), ("batch", None, "act_heads", None))

    out = jax.lax.map(one, (qs, segs, slots))
    return out.swapaxes(0, 1).reshape(b, sq, h, d)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec | jax.Array, impl: str = "xla") -> jax.Array:
    """Dispatch on ``impl``: "xla" (reference), "chunked" (query-chunked, for 16k-32k traces),
    "dot_product" (jax.nn.dot_product_attention, backend's choice), "cudnn" (force the cuDNN flash kernel; GPU,
    bf16/fp16 only). Shapes as in :func:`xla_attention`."""
    if impl == "chunked" and isinstance(mask, MaskSpec):
        return chunked_attention(q, k, v, mask)
    if isinstance(mask, MaskSpec):
        mask = mask.dense()
    if impl in ("xla", "chunked"):
        return xla_attention(q, k, v, mask)
    if impl in ("dot_product", "cudnn"):
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation="cudnn" if impl == "cudnn" else None
        ).astype(q.dtype)
    raise ValueError(f"unknown attention implementation {impl!r} (xla, dot_product, cudnn)")
