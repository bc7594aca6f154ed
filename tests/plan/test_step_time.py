"""The compiled step-time estimate (plan/step_time.py): layer extrapolation, unrolled loss, splash FLOPs by hand."""

import dataclasses

import pytest

from jax_distill.model.config import ModelConfig
from jax_distill.plan.topology import libtpu_available

needs_libtpu = pytest.mark.skipif(not libtpu_available(), reason="libtpu not installed (pip install 'jax-distill[tpu]')")


def test_splash_flops_count_the_causal_tiles_by_hand():
    """S = 1024 with 512-query blocks and 512-key compute blocks: tiles (0,0), (1,0), (1,1) are computed, (0,1) is
    above the diagonal. Each tile is a [512, D] x [D, 512] product; forward 2 products, the forward again under remat,
    backward 7; rows split over data axes, heads over tensor."""
    import jax

    from jax_distill.plan.step_time import splash_flops_per_chip
    from jax_distill.sharding import MeshConfig, make_mesh

    cfg = ModelConfig(preset="tiny", remat="full", attention="splash").resolve()  # 4 heads of 16, 2 layers
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    tile = 2 * 512 * 512 * cfg.head_dim
    rows, heads = 8 // 4, cfg.num_attention_heads // 2
    assert splash_flops_per_chip(cfg, mesh, 8, 1024) == tile * 3 * (2 * 2 + 7) * rows * heads * cfg.num_hidden_layers
    no_remat = dataclasses.replace(cfg, remat="none")
    assert splash_flops_per_chip(no_remat, mesh, 8, 1024) == tile * 3 * (2 + 7) * rows * heads * 2


@needs_libtpu
def test_extrapolated_estimate_equals_the_fully_unrolled_program():
    """The estimate from 1- and 2-layer compiles equals the compiler's optimal_seconds for the whole 4-layer program
    compiled unrolled (loss unrolled too)."""
    from jax_distill.plan.aot import compile_train_step
    from jax_distill.plan.step_time import NO_WINDOWED_EINSUM, _costs, estimate_tpu_step
    from jax_distill.plan.topology import parse_topology, topology_devices
    from jax_distill.sharding import MeshConfig, make_mesh

    topo = parse_topology("v5p-8")
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), topology_devices(topo))
    cfg = dataclasses.replace(ModelConfig(preset="tiny", dtype="bfloat16", remat="full").resolve(),
                              num_hidden_layers=4, scan_layers=False)
    est = estimate_tpu_step(cfg, mesh, batch_size=4, seq_len=1024, peak_flops=topo.chip.peak_bf16_flops)
    whole = _costs(compile_train_step(cfg, mesh, 4, 1024, unroll_loss=True, compiler_options=NO_WINDOWED_EINSUM))
    assert est.step_seconds == pytest.approx(whole["optimal_seconds"], rel=0.03)
    assert est.loops_left == 0 and est.kernel_seconds == 0.0
    assert est.matmul_flops_per_s == pytest.approx(394e12, rel=0.1)  # v5p in libtpu's cost model
    assert 0 < est.mfu < 1


@needs_libtpu
def test_roofline_replaces_libtpu_where_its_times_are_negative():
    """libtpu 0.0.42 (and 0.0.52) reports negative optimal_seconds for v5e/v6e training steps. Fed the same two
    compiled programs with libtpu's times made negative that way, the estimate switches to our roofline over their
    HLO: compute and collectives extrapolated to every layer, overlapped, plus splash's FLOPs at the datasheet peak."""
    from jax_distill.hardware import CHIPS
    from jax_distill.plan.step_time import (
        _compile_unrolled,
        estimate_tpu_step,
        splash_flops_per_chip,
    )
    from jax_distill.plan.topology import parse_topology, topology_devices
    from jax_distill.sharding import MeshConfig, make_mesh

    topo = parse_topology("v5e-8")
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), topology_devices(topo))
    cfg = ModelConfig(preset="tiny", dtype="bfloat16", remat="full", attention="splash").resolve()
    compiled = {}

    def real(small, mesh, batch, seq):
        key = small.num_hidden_layers
        compiled[key] = compiled.get(key) or _compile_unrolled(small, mesh, batch, seq)
        return compiled[key]

    class NegativeLibtpu:  # libtpu 0.0.42's answer for a 0.5B step's 1 and 2 layers on v6e-8 (FLOPs, bytes sane)
        def __init__(self, c, seconds):
            self.c, self.seconds = c, seconds

        def as_text(self):
            return self.c.as_text()

        def cost_analysis(self):
            return {**self.c.cost_analysis(), "optimal_seconds": self.seconds}

    sane = estimate_tpu_step(cfg, mesh, batch_size=8, seq_len=1024, chip=topo.chip, compile_fn=real)
    bad = estimate_tpu_step(cfg, mesh, batch_size=8, seq_len=1024, chip=topo.chip,
                            compile_fn=lambda small, *a: NegativeLibtpu(real(small, *a),
                                                                        {1: -16.98, 2: -36.98}[small.num_hidden_layers]))
    assert sane.estimator == "libtpu" and sane.step_seconds == sane.libtpu_seconds
    assert bad.estimator == "roofline" and bad.libtpu_seconds is None and bad.libtpu_per_layer_seconds < 0
    kernel = splash_flops_per_chip(cfg, mesh, 8, 1024) / CHIPS["v5e"].peak_bf16_flops
    assert bad.step_seconds == pytest.approx(max(bad.roofline_compute_seconds, bad.roofline_collective_seconds)
                                             + kernel, rel=1e-9)
    assert bad.roofline_seconds == pytest.approx(sane.roofline_seconds, rel=1e-12)  # same programs, same roofline
    assert bad.mfu == pytest.approx(sane.mfu * sane.step_seconds / bad.step_seconds, rel=1e-9)
