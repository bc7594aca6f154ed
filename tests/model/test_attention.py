"""Every attention implementation against the XLA reference, on packed causal rows (several documents per row,
trailing padding), forward and gradients. Splash runs in Pallas interpret mode here; its TPU compile is checked
ahead of time for a v5p topology. cuDNN cannot run on CPU: its mask form (ragged runs) is checked against ours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_distill.model.attention import (MaskSpec, attention, block_layout, chunked_attention, make_mask,
                                         runs_mask, segment_runs, splash_attention, xla_attention)
from jax_distill.plan.topology import libtpu_available

needs_libtpu = pytest.mark.skipif(not libtpu_available(),
                                  reason="libtpu not installed (pip install 'jax-distill[tpu]')")


def packed_row(seq_len: int, lengths: list[int]) -> np.ndarray:
    """Documents of ``lengths`` one after another (segment ids 1, 2, ...), then padding (0)."""
    row = np.zeros(seq_len, np.int32)
    at = 0
    for i, n in enumerate(lengths, start=1):
        row[at:at + n] = i
        at += n
    return row


def batch(s: int, dtype, h=4, kh=2, d=16, seed=0):
    """Three packed rows of length ``s``: three documents + padding, one document filling the row, and a row that
    starts with a one-token document."""
    rows = [packed_row(s, [s // 3, s // 4, s // 5]), packed_row(s, [s]), packed_row(s, [1, s // 2, s // 3])]
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in ((3, s, h, d), (3, s, kh, d), (3, s, kh, d)))
    seg = jnp.asarray(np.stack(rows))
    slots = jnp.arange(s, dtype=jnp.int32)
    return q, k, v, MaskSpec(seg, seg, slots, slots)


def assert_matches_reference(fn, q, k, v, spec, tol):
    """Output on real tokens and the gradients of q, k, v (cotangent zero at padding queries, whose output is not
    specified by the reference) within ``tol`` of the reference, relative to the reference's largest value."""
    real = np.asarray(spec.q_segment_ids > 0)[:, :, None, None]
    ct = jnp.asarray(np.random.default_rng(1).normal(size=q.shape) * real, jnp.float32)

    def ref(q, k, v):
        return xla_attention(q, k, v, spec.dense())

    def rel(got, want, weight=1.0):
        got, want = np.asarray(got, np.float32) * weight, np.asarray(want, np.float32) * weight
        return np.abs(got - want).max() / np.abs(want).max()

    out, want = fn(q, k, v), ref(q, k, v)
    assert out.shape == want.shape and out.dtype == want.dtype
    assert rel(out, want, real) <= tol
    np.testing.assert_array_equal(np.asarray(out, np.float32) * (1 - real), 0)  # padding queries output zeros

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * ct)

    got_g = jax.grad(loss(fn), (0, 1, 2))(q, k, v)
    ref_g = jax.grad(loss(ref), (0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", got_g, ref_g):
        assert rel(g, r) <= tol, (name, rel(g, r))


@pytest.mark.parametrize("s,chunk", [(96, 32), (100, 32), (64, None)])
def test_chunked_fp32_equals_reference(s, chunk):
    """Lengths that are a multiple of the block, and not (100 = 4 blocks of 25 -> padded to 4 x 32)."""
    q, k, v, spec = batch(s, jnp.float32)
    assert_matches_reference(lambda q, k, v: chunked_attention(q, k, v, spec, chunk), q, k, v, spec, 1e-5)


def test_chunked_unmasked_interior_tiles_equal_reference():
    """Tiles whose keys every query sees, in every row, skip the mask: one document per row, and packed rows whose
    boundaries fall at different blocks (masked and unmasked tiles mixed, in both passes)."""
    from jax_distill.model.attention import _first_key_blocks, _unmasked_runs, _unmasked_tiles

    s, blk = 128, 16
    rows = np.stack([packed_row(s, [s]), packed_row(s, [40, 88]), packed_row(s, [s - 5])])  # last: 5 padding
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((3, s, 4, 16), (3, s, 2, 16), (3, s, 2, 16)))
    slots = jnp.arange(s, dtype=jnp.int32)
    spec = MaskSpec(jnp.asarray(rows), jnp.asarray(rows), slots, slots)
    free = np.asarray(_unmasked_tiles(spec.q_segment_ids, blk))
    # blocks 0-1 lie in every row's first document, blocks 3-6 in one document per row; block 2 holds row 1's
    # boundary, block 7 row 2's padding
    assert free[1, 0] and free[6, 3] and not free[2, 1] and not free[3, 2] and not free[7, 6] and not free.diagonal().any()
    lo, hi = _unmasked_runs(spec.q_segment_ids, blk, _first_key_blocks(spec.q_segment_ids, blk))
    assert list(np.asarray(lo)) == [0, 0, 2, 3, 3, 3, 3, 7] and list(np.asarray(hi)) == [2, 2, 3, 7, 7, 7, 7, 8]
    assert_matches_reference(lambda q, k, v: chunked_attention(q, k, v, spec, blk), q, k, v, spec, 1e-5)
    one = MaskSpec(spec.q_segment_ids[:1], spec.q_segment_ids[:1], slots, slots)
    assert_matches_reference(lambda q, k, v: chunked_attention(q, k, v, one, blk), q[:1], k[:1], v[:1], one, 1e-5)


def test_chunked_bf16_equals_reference():
    q, k, v, spec = batch(100, jnp.bfloat16, h=6, kh=2)
    assert_matches_reference(lambda q, k, v: chunked_attention(q, k, v, spec, 32), q, k, v, spec, 2e-2)


def test_block_layout_pads_less_than_a_block():
    assert block_layout(4096, 512) == (512, 4096)
    assert block_layout(600, 512) == (304, 608)  # two blocks of 304, not one padded to 1024
    assert block_layout(100, 32) == (32, 128)
    assert block_layout(5, 512) == (5, 5)


def test_chunked_skips_key_blocks_above_the_diagonal():
    """A NaN value in the last key block reaches no earlier query block: their tiles against it never exist
    (0 x NaN would be NaN had a masked tile been computed)."""
    q, k, v, spec = batch(128, jnp.float32)
    v = v.at[:, 96:].set(jnp.nan)
    out = np.asarray(chunked_attention(q, k, v, spec, 32))
    assert np.isfinite(out[:, :96]).all() and np.isnan(out[1, 96:]).all()
    ref = xla_attention(q, k, v.at[:, 96:].set(0), spec.dense())
    real = np.asarray(spec.q_segment_ids[:, :96] > 0)[:, :, None, None]
    np.testing.assert_allclose(out[:, :96] * real, np.asarray(ref)[:, :96] * real, atol=1e-5)


def test_chunked_skips_key_blocks_of_earlier_documents():
    """Packed row of two documents of 64: the second document's query blocks never touch the first's key blocks."""
    q, k, v, _ = batch(128, jnp.float32)
    seg = jnp.asarray(np.stack([packed_row(128, [64, 64])] * 3))
    slots = jnp.arange(128, dtype=jnp.int32)
    spec = MaskSpec(seg, seg, slots, slots)
    out = chunked_attention(q, k, v.at[:, :32].set(jnp.nan), spec, 32)
    assert np.isnan(np.asarray(out[:, :32])).all() and np.isfinite(np.asarray(out[:, 64:])).all()
    np.testing.assert_allclose(np.asarray(out[:, 64:]), np.asarray(xla_attention(q, k, v, spec.dense())[:, 64:]),
                               atol=1e-5)
    assert_matches_reference(lambda q, k, v: chunked_attention(q, k, v, spec, 32), q, k, v, spec, 1e-5)


def test_chunked_memory_is_not_quadratic():
    """Compiled temporary memory of forward+backward at 4096 tokens: the dense reference holds [H, S, S] scores, the
    block-causal one O(S x block)."""
    s = 4096
    q, k, v = (jax.ShapeDtypeStruct((1, s, n, 32), jnp.float32) for n in (4, 2, 2))
    seg = jnp.ones((1, s), jnp.int32)
    slots = jnp.arange(s, dtype=jnp.int32)
    spec = MaskSpec(seg, seg, slots, slots)

    def temp_bytes(fn):
        step = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), (0, 1, 2)))
        return step.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    dense = temp_bytes(lambda q, k, v: xla_attention(q, k, v, spec.dense()))
    blocked = temp_bytes(lambda q, k, v: chunked_attention(q, k, v, spec, 256))
    assert dense > 4 * 4 * s * s  # at least one fp32 [H, S, S]
    assert blocked < dense / 8, (blocked, dense)


@pytest.mark.parametrize("s", [256, 200])
def test_splash_interpret_fp32_equals_reference(s):
    """The TPU kernel itself (Pallas interpret mode), causal + segment ids; 200 is padded to 256."""
    q, k, v, spec = batch(s, jnp.float32)
    assert_matches_reference(lambda q, k, v: splash_attention(q, k, v, spec, interpret=True), q, k, v, spec, 1e-5)


def test_splash_interpret_bf16_equals_reference():
    q, k, v, spec = batch(128, jnp.bfloat16, h=4, kh=1)
    assert_matches_reference(lambda q, k, v: splash_attention(q, k, v, spec, interpret=True), q, k, v, spec, 2e-2)


@needs_libtpu
def test_splash_forward_backward_compile_for_v5p():
    """Forward + backward of splash, sharded over a v5p-8 (4 chips: fsdp 2 x tensor 2), compiles ahead of time:
    Mosaic kernels (forward, dq, dkv) inside shard_map, bf16, a length that needs padding (1000 -> 1024)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jax_distill.plan.topology import parse_topology, topology_devices

    devices = topology_devices(parse_topology("v5p-8"))
    mesh = Mesh(np.asarray(devices).reshape(1, 2, 2), ("data", "fsdp", "tensor"))
    b, s, h, kh, d = 4, 1000, 8, 2, 128
    act = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    args = [jax.ShapeDtypeStruct((b, s, n, d), jnp.bfloat16, sharding=act) for n in (h, kh, kh)]
    args.append(jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=NamedSharding(mesh, P(("data", "fsdp")))))

    def loss(q, k, v, seg):
        slots = jnp.arange(s, dtype=jnp.int32)
        return jnp.sum(splash_attention(q, k, v, MaskSpec(seg, seg, slots, slots)).astype(jnp.float32) ** 2)

    with jax.set_mesh(mesh):
        lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args)
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dq and dkv kernels
    compiled = lowered.compile()
    assert compiled.memory_analysis().peak_memory_in_bytes < 2**30


@needs_libtpu
def test_train_step_with_splash_compiles_for_v5p():
    """The real SFT step of a small model with ``attention: splash`` (layer scan, full remat, bf16) compiles for a
    v5p-8 with tensor parallelism through the planner's path (which traces the step under ``jax.set_mesh``)."""
    from jax_distill.model.config import ModelConfig
    from jax_distill.plan.aot import compile_train_step
    from jax_distill.plan.topology import parse_topology, topology_devices
    from jax_distill.sharding import MeshConfig, make_mesh

    cfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, max_position_embeddings=4096, dtype="bfloat16", remat="full",
                      attention="splash")
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), topology_devices(parse_topology("v5p-8")))
    compiled = compile_train_step(cfg, mesh, batch_size=4, seq_len=1024)
    assert "tpu_custom_call" in compiled.as_text()


def test_segment_runs_are_the_packed_mask():
    """cuDNN's causal mask over the runs equals ours on real tokens; the runs are in the documented
    jax.nn / cuDNN ragged form (left-aligned, -1 padded)."""
    s = 48
    rows = [packed_row(s, [20, 10, 5]), packed_row(s, [s]), packed_row(s, [1, 1, 30])]
    seg = jnp.asarray(np.stack(rows))
    runs = segment_runs(seg, 4)
    np.testing.assert_array_equal(runs.count, [4, 1, 4])
    np.testing.assert_array_equal(runs.lengths, [[20, 10, 5, 13], [48, -1, -1, -1], [1, 1, 30, 16]])
    np.testing.assert_array_equal(runs.offsets, [[0, 20, 30, 35, -1], [0, -1, -1, -1, -1], [0, 1, 2, 32, -1]])
    slots = jnp.arange(s, dtype=jnp.int32)
    ours = np.asarray(make_mask(seg, seg, slots, slots))
    theirs = np.asarray(runs_mask(runs, s))
    real = np.asarray(seg > 0)
    both = real[:, None, :, None] & real[:, None, None, :]
    np.testing.assert_array_equal(theirs & both, ours & both)
    assert (np.asarray(segment_runs(seg, 3).count) > 3).tolist() == [True, False, True]  # poisoned in cudnn


def test_cudnn_refuses_fp32_and_dense_masks_are_refused():
    q, k, v, spec = batch(32, jnp.float32)
    with pytest.raises(ValueError, match="bfloat16"):
        attention(q, k, v, spec, "cudnn")
    for impl in ("chunked", "splash", "cudnn"):
        with pytest.raises(ValueError, match="MaskSpec"):
            attention(q, k, v, spec.dense(), impl)
    with pytest.raises(ValueError, match="unknown attention"):
        attention(q, k, v, spec, "flash")
    with pytest.raises(ValueError, match="self-attention"):
        chunked_attention(q, k[:, :16], v[:, :16], spec)


def test_model_with_chunked_attention_equals_xla(tmp_path):
    """The whole model on packed rows (positions restarting per document), odd length: logits on real tokens."""
    from jax_distill import load_pretrained
    from tests.model.hf_reference import make_hf_model

    make_hf_model(tmp_path, hidden=48, heads=6, kv=2)
    s = 45
    seg = np.stack([packed_row(s, [20, 15]), packed_row(s, [s])])
    pos = np.stack([np.concatenate([np.arange(20), np.arange(15), np.zeros(10)]), np.arange(s)]).astype(np.int32)
    ids = np.random.default_rng(0).integers(0, 300, size=(2, s)).astype(np.int32)
    ref = np.asarray(load_pretrained(tmp_path, attention="xla")(ids, pos, seg))
    got = np.asarray(load_pretrained(tmp_path, attention="chunked")(ids, pos, seg))
    real = (seg > 0)[..., None]
    np.testing.assert_allclose(got * real, ref * real, atol=1e-5 * np.abs(ref).max(), rtol=0)
