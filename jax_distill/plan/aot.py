"""Compile the real training step ahead of time for a TPU slice, from a CPU host (eval's decode: plan/decode.py).

Nothing is allocated: parameters, optimizer state and batches are `jax.ShapeDtypeStruct`s with `NamedSharding`s over
the slice's abstract devices. The compiled executable's `memory_analysis().peak_memory_in_bytes` is the per-chip
peak; the compiler refusing with RESOURCE_EXHAUSTED means the configuration does not fit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import jax
from jax.sharding import Mesh

from jax_distill.model.config import ModelConfig
from jax_distill.model.flops import train_flops_per_token
from jax_distill.plan.topology import Topology, topology_devices
from jax_distill.sharding import MeshConfig, make_mesh


@dataclass
class PlanResult:
    topology: str
    chips: int
    mesh: dict[str, int]
    fits: bool
    per_chip_bytes: int | None
    hbm_bytes: int
    tokens_per_step: int
    flops_per_step: float  # analytic model FLOPs (see model/flops.py)
    flops_per_token: float
    step_time_s: float  # at the assumed MFU
    assumed_mfu: float
    tokens_per_second: float
    compile_seconds: float
    error: str | None = None
    decode: dict[str, Any] = field(default_factory=dict)
    compiler_flops_per_step: float | None = None
    estimate: dict[str, Any] = field(default_factory=dict)  # plan/step_time.py's StepEstimate

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _peak_bytes(compiled) -> int | None:
    try:
        return int(compiled.memory_analysis().peak_memory_in_bytes)
    except Exception:  # noqa: BLE001 - some backends do not report it
        return None


def compile_train_step(model_cfg: ModelConfig, mesh: Mesh, batch_size: int, seq_len: int, grad_accum: int = 1,
                       unroll_loss: bool = False, compiler_options: dict[str, Any] | None = None):
    from jax_distill.train.step import abstract_train_step

    fn, args = abstract_train_step(model_cfg, mesh, batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum,
                                   unroll_loss=unroll_loss)
    with jax.set_mesh(mesh):  # the mesh in context: attention "splash" runs its kernel under shard_map over it
        return fn.lower(*args).compile(compiler_options=compiler_options)


def plan_training(model_cfg: ModelConfig, topo: Topology, *, seq_len: int, batch_size: int,
                  mesh_cfg: MeshConfig | None = None, grad_accum: int = 1, assumed_mfu: float = 0.4,
                  compiler_flops: bool = False, estimate: bool = True) -> PlanResult:
    """Compile stage training for ``topo`` and report memory, fit, FLOPs, the step time at ``assumed_mfu`` and
    (``estimate``) the compiler's step-time estimate (plan/step_time.py; ``compiler_flops`` comes with it)."""
    cfg = model_cfg.resolve()
    mesh_cfg = mesh_cfg or MeshConfig(data=1, fsdp=-1, tensor=1)
    mesh = make_mesh(mesh_cfg, topology_devices(topo))
    tokens = batch_size * seq_len
    fpt = train_flops_per_token(cfg, seq_len)
    flops = fpt * tokens
    t0 = time.perf_counter()
    peak, error = None, None
    try:
        compiled = compile_train_step(cfg, mesh, batch_size, seq_len, grad_accum)
        peak = _peak_bytes(compiled)
        fits = peak is None or peak <= topo.hbm_bytes
    except Exception as err:  # noqa: BLE001 - the compiler's refusal is the answer "does not fit"
        msg = str(err)
        # Not any message that says "memory": a sharding error names `memory_kind=device` and is no answer on fit.
        if "RESOURCE_EXHAUSTED" not in msg and "out of memory" not in msg.lower():
            raise
        fits, error = False, msg.splitlines()[0][:500]
    compile_s = time.perf_counter() - t0
    step_time = flops / (topo.chips * topo.chip.peak_bf16_flops * assumed_mfu)
    result = PlanResult(topology=topo.name, chips=topo.chips, mesh=dict(mesh.shape), fits=fits, per_chip_bytes=peak,
                        hbm_bytes=topo.hbm_bytes, tokens_per_step=tokens, flops_per_step=flops,
                        flops_per_token=fpt, step_time_s=step_time, assumed_mfu=assumed_mfu,
                        tokens_per_second=tokens / step_time, compile_seconds=compile_s, error=error)
    if estimate or compiler_flops:
        from jax_distill.plan.step_time import estimate_tpu_step

        est = estimate_tpu_step(cfg, mesh, batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum,
                                chip=topo.chip)
        result.estimate = est.as_dict()
        result.compiler_flops_per_step = est.compiler_flops_per_step
    return result
