"""A TPU step-time estimate from the compiled training step, for `plan` and `cost`.

Two estimators price the same compiled programs, and the estimate says which one it used (``estimator``):

- ``libtpu``: ``cost_analysis()``'s ``optimal_seconds``, libtpu's roofline time of the per-chip program (on v5p it
  prices a large bf16 matmul at ~394 TFLOP/s and elementwise traffic at ~2.35 TB/s; :func:`compiler_rates`
  measures both). Used where it is sane: positive, and the 2-layer program above the 1-layer one.
- ``roofline``: ours over the optimized HLO (plan/roofline.py, the GPU plans' estimator) at the chip's datasheet
  rates (hardware.py: bf16 peak, HBM and ICI bandwidth), compute and collectives overlapped. libtpu 0.0.42 (and
  0.0.52) reports negative ``optimal_seconds`` for v5e and v6e training steps, so there it is the only estimate.

Both read the per-layer programs the same way; three things make them under-count a real step, and this module
corrects each:

- a loop body is counted once: the scanned layers, the loss's chunk loop, the gradient-accumulation scan. The step
  is compiled with 1 and 2 layers unrolled and the loss unrolled; one layer costs ``t2 - t1`` and the full depth
  ``t1 + (L - 1) (t2 - t1)``; one micro-batch is compiled and multiplied by ``grad_accum`` (the optimizer update is
  then counted ``grad_accum`` times, a small overestimate). Loops left in the compiled program are reported.
- XLA's TPU compiler turns FSDP matmuls into "windowed einsum" loops (the all-gather or reduce-scatter interleaved
  with the matmul, one shard per iteration); their FLOPs are then counted once, not per shard (a 7B 16k layer's count
  fell to ~0.66x). The estimate compiles with them off (:data:`NO_WINDOWED_EINSUM`): the same matmuls and
  collectives without the loop; on a 0.5B layer the time with and without differs by under 10%.
- Pallas (Mosaic) kernels are priced at about zero. Splash attention's FLOPs are counted here from its tiling: the
  (query block, key sub-block) tiles on or below the diagonal, forward ``Q·Kᵀ`` and ``P·V``, the forward again under
  remat, and the backward's seven products (dK/dV kernel: ``Q·Kᵀ, dO·Vᵀ, Pᵀ·dO, dSᵀ·Q``; dQ kernel: ``Q·Kᵀ, dO·Vᵀ,
  dS·K``), on this chip's share of rows and heads, at the estimator's matmul rate.

Both parts are rooflines (no launch gaps, no pipeline bubbles), so the estimate is a lower bound on the real step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jax_distill.hardware import Chip
from jax_distill.model.config import ModelConfig
from jax_distill.plan.roofline import ChipRates, roofline

# libtpu options for the estimate's compiles (see the module docstring).
NO_WINDOWED_EINSUM = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                      "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


@dataclass
class StepEstimate:
    """Estimated time of one optimizer step on the slice, and where it goes (seconds, per chip = per step)."""

    step_seconds: float
    xla_seconds: float  # the compiled program, extrapolated to every layer and micro-batch
    kernel_seconds: float  # Pallas kernels added analytically (splash attention)
    per_layer_seconds: float  # one layer's XLA part, one micro-batch
    estimator: str  # "libtpu" or "roofline": which one gave the figures above
    libtpu_seconds: float | None  # libtpu's step (kernels at its matmul rate); None when unusable
    libtpu_per_layer_seconds: float  # as libtpu reports it: negative or below the 1-layer program = unusable
    roofline_seconds: float  # ours: max(compute, collectives) + kernels at the datasheet peak
    roofline_compute_seconds: float  # XLA kernels, every layer and micro-batch
    roofline_collective_seconds: float
    compiler_flops_per_step: float  # whole slice: the compiler's count, extrapolated, plus the kernels' FLOPs
    kernel_flops_per_step: float  # whole slice
    matmul_flops_per_s: float  # the compiler's rate for a large bf16 matmul on this chip
    hbm_bytes_per_s: float
    loops_left: int  # while loops still in the unrolled 1-layer program (each counted once)
    mfu: float | None = None  # model FLOPs / (step_seconds x chips x datasheet peak)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _costs(compiled) -> dict[str, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return dict(ca or {})


def compiler_rates(device) -> tuple[float, float]:
    """(matmul FLOP/s, HBM bytes/s) that the compiler's cost model assumes for ``device``'s chip: one 8192³ bf16
    matmul and one elementwise op compiled for it, their FLOPs and bytes over ``optimal_seconds``."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    one = NamedSharding(Mesh([device], ("x",)), P())
    n = 8192
    a = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=one)
    mm = _costs(jax.jit(lambda x, y: x @ y, out_shardings=one).lower(a, a).compile())
    ew = _costs(jax.jit(lambda x: x * 2 + 1, out_shardings=one).lower(a).compile())
    if "optimal_seconds" not in mm or "optimal_seconds" not in ew:
        raise ValueError(f"the compiler for {device.device_kind} reports no optimal_seconds")
    return 2 * n**3 / mm["optimal_seconds"], float(ew["bytes accessed"]) / ew["optimal_seconds"]


def tpu_rates(chip: Chip, chips: int) -> ChipRates:
    """The TPU roofline's rates: a slice is one node, its collectives ride ICI."""
    if not (chip.hbm_bytes_per_s and chip.ici_bytes_per_s):
        raise ValueError(f"{chip.name}: hardware.py has no HBM/ICI bandwidth for the TPU roofline")
    return ChipRates(chip.peak_bf16_flops, chip.hbm_bytes_per_s, chip.ici_bytes_per_s, network_bytes_per_s=0.0,
                     chips_per_node=chips, f32_matmul_ratio=1.0)


def splash_flops_per_chip(cfg: ModelConfig, mesh: Mesh, batch_size: int, seq_len: int) -> float:
    """FLOPs of the splash attention kernels for one step of one micro-batch [batch_size, seq_len], on one chip."""
    from jax_distill.model.attention import splash_block_sizes, splash_mesh_split

    cfg = cfg.resolve()
    sp = -(-seq_len // 128) * 128
    bs = splash_block_sizes(sp)
    bq, bk = bs.block_q, bs.block_kv_compute
    # Tiles the causal mask keeps: key sub-block j with j * bk <= the last query of block i.
    tiles = sum(min(sp // bk, ((i + 1) * bq - 1) // bk + 1) for i in range(sp // bq))
    per_product = 2 * bq * bk * cfg.head_dim * tiles  # one [bq, d] x [d, bk] product over every kept tile, one head
    forwards = 1 if cfg.remat == "none" else 2  # remat (full or dots) recomputes the kernel's forward
    products = 2 * forwards + 7
    batch_axes, head_axis, _ = splash_mesh_split(mesh, batch_size, cfg.num_attention_heads,
                                                 cfg.num_key_value_heads)
    rows = batch_size // math.prod(mesh.shape[a] for a in batch_axes)
    heads = cfg.num_attention_heads // (mesh.shape[head_axis] if head_axis else 1)
    return float(per_product * products * rows * heads * cfg.num_hidden_layers)


def _compile_unrolled(cfg: ModelConfig, mesh: Mesh, batch_size: int, seq_len: int):
    """The training step as `plan/aot.py` compiles it, with the loss unrolled and windowed einsum off."""
    from jax_distill.train.step import abstract_train_step

    fn, args = abstract_train_step(cfg, mesh, batch_size=batch_size, seq_len=seq_len, unroll_loss=True)
    with jax.set_mesh(mesh):  # splash runs its kernel under shard_map over the mesh in context
        return fn.lower(*args).compile(compiler_options=NO_WINDOWED_EINSUM)


def estimate_tpu_step(cfg: ModelConfig, mesh: Mesh, *, batch_size: int, seq_len: int, grad_accum: int = 1,
                      peak_flops: float | None = None, chip: Chip | None = None, compile_fn=None) -> StepEstimate:
    """Estimate one training step of ``cfg`` at [batch_size, seq_len] on ``mesh`` (abstract TPU devices).

    ``compile_fn(cfg, mesh, batch_size, seq_len)`` compiles the step with the loss unrolled (default:
    the step as ``plan/aot.py`` compiles it, with :data:`NO_WINDOWED_EINSUM`). ``chip``: the slice's chip (default:
    from the devices' kind), for the roofline's rates and the MFU (against ``peak_flops``, default its bf16 peak).
    """
    from jax_distill.hardware import chip_for_device_kind
    from jax_distill.model.flops import train_flops_per_token

    cfg = cfg.resolve()
    if batch_size % grad_accum:
        raise ValueError(f"batch {batch_size} does not divide into {grad_accum} micro-batches")
    chip = chip or chip_for_device_kind(mesh.devices.flat[0].device_kind)
    if chip is None:
        raise ValueError(f"no TPU chip for device kind {mesh.devices.flat[0].device_kind!r}")
    peak_flops = peak_flops or chip.peak_bf16_flops
    chips = mesh.devices.size
    rates = tpu_rates(chip, chips)
    micro = batch_size // grad_accum
    compile_fn = compile_fn or _compile_unrolled
    seconds, flops, compute, collective, loops = [], [], [], [], 0
    for layers in (1, 2):
        small = dataclasses.replace(cfg, num_hidden_layers=layers, scan_layers=False)
        compiled = compile_fn(small, mesh, micro, seq_len)
        ca = _costs(compiled)
        text = compiled.as_text()
        rl = roofline(text, rates)
        seconds.append(float(ca.get("optimal_seconds", -1.0)))
        flops.append(float(ca.get("flops", 0.0)))
        compute.append(rl.compute_s)
        collective.append(rl.collective_s)
        if layers == 1:
            loops = len(re.findall(r"\bwhile\(", text))

    def whole(per_program: list[float]) -> float:
        """Every layer from the 1- and 2-layer programs, every micro-batch."""
        return (per_program[0] + (per_program[1] - per_program[0]) * (cfg.num_hidden_layers - 1)) * grad_accum

    kernel_flops = splash_flops_per_chip(cfg, mesh, micro, seq_len) * grad_accum if cfg.attention == "splash" else 0.0
    matmul_rate, hbm_rate = compiler_rates(mesh.devices.flat[0])
    libtpu_sane = seconds[0] > 0 and seconds[1] > seconds[0]
    libtpu = whole(seconds) + kernel_flops / matmul_rate if libtpu_sane else None
    ours_xla = max(whole(compute), whole(collective))
    ours = ours_xla + kernel_flops / peak_flops
    xla_flops = (flops[0] + (flops[1] - flops[0]) * (cfg.num_hidden_layers - 1)) * grad_accum
    if libtpu_sane:
        estimator, step, xla, per_layer = "libtpu", libtpu, whole(seconds), seconds[1] - seconds[0]
        kernel = kernel_flops / matmul_rate
    else:
        estimator, step, xla, kernel = "roofline", ours, ours_xla, kernel_flops / peak_flops
        per_layer = max(compute[1] - compute[0], collective[1] - collective[0])
        matmul_rate, hbm_rate = peak_flops, rates.hbm_bytes_per_s
    est = StepEstimate(step_seconds=step, xla_seconds=xla, kernel_seconds=kernel, per_layer_seconds=per_layer,
                       estimator=estimator, libtpu_seconds=libtpu, libtpu_per_layer_seconds=seconds[1] - seconds[0],
                       roofline_seconds=ours, roofline_compute_seconds=whole(compute),
                       roofline_collective_seconds=whole(collective),
                       compiler_flops_per_step=(xla_flops + kernel_flops) * chips,
                       kernel_flops_per_step=kernel_flops * chips, matmul_flops_per_s=matmul_rate,
                       hbm_bytes_per_s=hbm_rate, loops_left=loops)
    model_flops = train_flops_per_token(cfg, seq_len) * batch_size * seq_len
    est.mfu = model_flops / (est.step_seconds * chips * peak_flops)
    return est
