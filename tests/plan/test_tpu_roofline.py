"""The roofline over optimized HLO (plan/roofline.py) on TPU programs: the TPU compiler's convolution form of a
matmul, VMEM operands, collectives over ICI; priced by hand. The compile tests need libtpu (no TPU)."""

import pytest

from jax_distill.hardware import CHIPS
from jax_distill.plan.roofline import roofline
from jax_distill.plan.step_time import tpu_rates
from jax_distill.plan.topology import libtpu_available

needs_libtpu = pytest.mark.skipif(not libtpu_available(), reason="libtpu not installed (pip install 'jax-distill[tpu]')")

# The q projection `nd,dhk->nhk` as libtpu 0.0.42 compiles it for v5p (2 heads per chip): a convolution whose head
# axis is a padded, reversed window of 2. Its operands sit in VMEM (S(1)), the result in HBM.
_CONV_HLO = """HloModule m, num_partitions=1

ENTRY %main (p0: bf16[4,1024,64,1], p1: bf16[64,2,16,1]) -> bf16[4,1024,2,16] {
  %p0 = bf16[4,1024,64,1]{1,2,3,0:T(8,128)(2,1)S(1)} parameter(0)
  %p1 = bf16[64,2,16,1]{0,2,1,3:T(8,128)(2,1)S(1)} parameter(1)
  ROOT %convolution.68 = bf16[4,1024,2,16]{1,3,2,0:T(8,128)(2,1)} convolution(%p0, %p1), window={size=1x2 pad=0_0x1_1 rhs_reversal=0x1}, dim_labels=0bf1_i1o0->0b1f
}
"""


def test_tpu_convolution_counts_the_matmul_flops_and_only_hbm_bytes():
    """2 x (4·1024 tokens x 2 heads x 16) outputs x 64 inputs: the padded window position adds nothing; only the
    result is HBM traffic."""
    r = roofline(_CONV_HLO, tpu_rates(CHIPS["v5p"], 4))
    flops = 2 * (4 * 1024 * 2 * 16) * 64
    assert r.flops == flops and r.kernels == 1
    assert r.hbm_bytes == 4 * 1024 * 2 * 16 * 2
    assert r.compute_s == pytest.approx(max(flops / 459e12, r.hbm_bytes / 2765e9), rel=1e-12)


def _compile_tpu(fn, shape, dtype, topology, n_args, in_spec=None, out_spec=None):
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jax_distill.plan.topology import parse_topology, topology_devices

    topo = parse_topology(topology)
    devices = topology_devices(topo)
    mesh = Mesh(np.asarray(devices[:1] if in_spec is None else devices), ("x",))
    arg = jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, in_spec or P()))
    out = NamedSharding(mesh, out_spec or P())
    return jax.jit(fn, out_shardings=out).lower(*[arg] * n_args).compile(), topo


@needs_libtpu
@pytest.mark.parametrize("topology", ["v5e-8", "v6e-8", "v5p-8"])
def test_tpu_roofline_of_one_large_matmul(topology):
    """8192^3 bf16 on one chip: 2·8192^3 FLOPs at the datasheet peak (v5e 197, v6e 918, v5p 459 TFLOP/s)."""
    import jax.numpy as jnp

    n = 8192
    compiled, topo = _compile_tpu(lambda a, b: a @ b, (n, n), jnp.bfloat16, topology, 2)
    r = roofline(compiled.as_text(), tpu_rates(topo.chip, 1))
    assert r.flops == 2 * n**3
    assert r.compute_s == pytest.approx(2 * n**3 / topo.chip.peak_bf16_flops, rel=1e-3)
    assert r.collective_s == 0


@needs_libtpu
@pytest.mark.parametrize("topology, ici", [("v5e-8", 200e9), ("v6e-8", 400e9)])
def test_tpu_roofline_of_one_all_gather_over_ici(topology, ici):
    """8 chips gather 32 MiB shards of a 256 MiB f32 array: each receives 7 shards over ICI (one direction of the
    datasheet's bidirectional per-chip figure: v5e 400 GB/s, v6e 800 GB/s)."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    compiled, topo = _compile_tpu(lambda a: a, (2**26,), jnp.float32, topology, 1, in_spec=P("x"), out_spec=P())
    r = roofline(compiled.as_text(), tpu_rates(topo.chip, topo.chips))
    assert r.collectives == 1 and r.network_s == 0
    assert r.collective_bytes == 7 * 2**25
    assert r.collective_s == pytest.approx(7 * 2**25 / ici, rel=1e-9)
