"""Ahead-of-time plans for NVIDIA GPU nodes, from a CPU host: the real training step compiled by XLA's GPU compiler.

With the CUDA PJRT plugin installed (``pip install 'jax-distill[gpu-plan]'``: jax-cuda12-plugin and jax-cuda12-pjrt at
the jaxlib version, ptxas from nvidia-cuda-nvcc-cu12, cuDNN for cuDNN attention) and ``JAX_PLATFORMS=cpu`` set before
jax is imported, ``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`` gives abstract
GPUs described by an XLA ``GpuTargetConfigProto`` (the ``gpu_specs`` folder: H100, H200, A100, B200), and
``jit(...).lower(...).compile()`` compiles for them with no GPU present.

Unlike the TPU compiler, the GPU compiler never refuses a program that is too large, so fit is decided here: the
compiled peak (``memory_analysis().peak_memory_in_bytes``, arguments + temporaries) against the memory JAX's allocator
may use, ``min(mem_fraction x device memory, device memory - runtime reserve)``: JAX preallocates 75% of the GPU by
default (``XLA_PYTHON_CLIENT_MEM_FRACTION``), and the CUDA context, NCCL's buffers and cuBLAS workspaces live outside
its pool.

Topology names: ``[NODESx]GPUSxKIND``, e.g. ``8xh100`` (one node of 8 H100s), ``2x8xh100`` (2 nodes of 8), with KIND
one of a100, h100, h200, b200.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jax_distill.plan.roofline import ChipRates, roofline
from jax_distill.plan.topology import CHIPS, Chip

GiB = 2**30
GPU_SPECS_ENV = "JAX_DISTILL_GPU_SPECS"
JAX_DEFAULT_MEM_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default
# Device memory outside JAX's pool that a training process needs: CUDA context and module images (~0.5-1 GiB),
# NCCL communicators' buffers, cuBLAS/cuDNN handles. An estimate; it only matters when mem_fraction nears 1.
RUNTIME_RESERVE_BYTES = 2 * GiB


@dataclass(frozen=True)
class GpuKind:
    key: str
    spec_file: str  # in the gpu_specs folder
    chip: Chip  # datasheet: dense bf16 FLOP/s (the memory size used for fit comes from the spec file)
    nvlink_bytes_per_s: float  # per GPU, one direction
    network_bytes_per_s: float  # per GPU between nodes (one NIC per GPU), one direction
    network: str


# Dense bf16 peaks and links from NVIDIA's datasheets (A100: 312 TFLOP/s, NVLink 3 600 GB/s both ways, HDR 200 Gb/s
# per GPU in a DGX A100; H100/H200 SXM: 989 TFLOP/s, NVLink 4 900 GB/s, NDR 400 Gb/s per GPU; B200: 2.25 PFLOP/s
# dense, NVLink 5 1.8 TB/s, 400 Gb/s per GPU in a DGX B200).
GPU_KINDS = {
    "a100": GpuKind("a100", "a100_sxm_80.txtpb",
                    Chip("NVIDIA A100 SXM4 80GB", 80 * 10**9, 312e12, "https://www.nvidia.com/en-us/data-center/a100/"),
                    300e9, 25e9, "HDR InfiniBand 200 Gb/s per GPU"),
    "h100": GpuKind("h100", "h100_sxm.txtpb", CHIPS["h100"], 450e9, 50e9, "NDR InfiniBand 400 Gb/s per GPU"),
    "h200": GpuKind("h200", "h200_sxm_derived.txtpb", CHIPS["h200"], 450e9, 50e9, "NDR InfiniBand 400 Gb/s per GPU"),
    "b200": GpuKind("b200", "b200.txtpb",
                    Chip("NVIDIA B200", 180 * 10**9, 2.25e15, "https://www.nvidia.com/en-us/data-center/dgx-b200/"),
                    900e9, 50e9, "400 Gb/s per GPU"),
}

_NAME = re.compile(r"(?:(\d+)x)?(\d+)x(" + "|".join(GPU_KINDS) + r")")


@dataclass(frozen=True)
class GpuTopology:
    """``nodes`` x ``gpus_per_node`` GPUs of one kind."""

    name: str
    kind: GpuKind
    nodes: int
    gpus_per_node: int

    @property
    def chips(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def chip(self) -> Chip:
        return self.kind.chip

    @property
    def xla_topology(self) -> str:
        return f"1x{self.nodes}x{self.gpus_per_node}"  # partitions x hosts x devices per host


def is_gpu_topology(name: str) -> bool:
    """Whether ``name`` is meant as GPUs (anything that is not a TPU slice name, so typos get the GPU syntax)."""
    return not re.match(r"(v\d|v5litepod)", name.strip().lower())


def parse_gpu_topology(name: str) -> GpuTopology:
    """``8xh100`` = one node of 8 H100s; ``2x8xh100`` = 2 nodes of 8 (16 GPUs). Kinds: a100, h100, h200, b200."""
    m = _NAME.fullmatch(name.strip().lower())
    if not m:
        raise ValueError(f"unknown GPU topology {name!r}: expected [NODESx]GPUSxKIND, e.g. 8xh100 or 2x8xh100, "
                         f"with KIND one of {', '.join(GPU_KINDS)}")
    nodes, gpus = int(m.group(1) or 1), int(m.group(2))
    if gpus not in (1, 2, 4, 8):
        raise ValueError(f"{name}: GPUs per node must be 1, 2, 4 or 8, not {gpus}")
    if nodes < 1:
        raise ValueError(f"{name}: a GPU topology needs at least one node")
    return GpuTopology(name, GPU_KINDS[m.group(3)], nodes, gpus)


# ------------------------------------------------------------------------------------------------ target specs


def default_gpu_specs_dir() -> Path:
    """$JAX_DISTILL_GPU_SPECS, else $JAX_DISTILL_SHARED_DATA/gpu_specs, else ../shared/data/gpu_specs beside the
    repository this package is imported from."""
    if os.environ.get(GPU_SPECS_ENV):
        return Path(os.environ[GPU_SPECS_ENV])
    if os.environ.get("JAX_DISTILL_SHARED_DATA"):
        return Path(os.environ["JAX_DISTILL_SHARED_DATA"]) / "gpu_specs"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gpu_specs"


@dataclass(frozen=True)
class GpuSpec:
    """What the target config tells about one GPU."""

    text: str
    description: str
    device_memory_bytes: int
    hbm_bytes_per_s: float
    compute_capability: str = "9.0"  # cuda_compute_capability major.minor


def load_gpu_spec(kind: GpuKind, specs_dir: str | Path | None = None) -> GpuSpec:
    specs = Path(specs_dir) if specs_dir else default_gpu_specs_dir()
    path = specs / kind.spec_file
    if not path.is_file():
        raise FileNotFoundError(f"GPU target spec {path} not found: pass --gpu-specs DIR (or set {GPU_SPECS_ENV}) "
                                f"to a folder with XLA GpuTargetConfigProto files ({kind.spec_file})")
    text = path.read_text()

    def field_(key: str) -> str:
        m = re.search(rf"^\s*{key}:\s*\"?([^\"\n]+)\"?", text, re.MULTILINE)
        if not m:
            raise ValueError(f"{path}: no {key}")
        return m.group(1).strip()

    cc = re.search(r"cuda_compute_capability\s*\{([^}]*)\}", text)
    major = re.search(r"major:\s*(\d+)", cc.group(1)) if cc else None
    minor = re.search(r"minor:\s*(\d+)", cc.group(1)) if cc else None
    if not major:
        raise ValueError(f"{path}: no cuda_compute_capability")
    return GpuSpec(text, field_("device_description_str"), int(field_("device_memory_size")),
                   float(field_("memory_bandwidth")), f"{major.group(1)}.{minor.group(1) if minor else 0}")


def gpu_rates(topo: GpuTopology, spec: GpuSpec) -> ChipRates:
    return ChipRates(topo.chip.peak_bf16_flops, spec.hbm_bytes_per_s, topo.kind.nvlink_bytes_per_s,
                    topo.kind.network_bytes_per_s, topo.gpus_per_node)


def usable_bytes(spec: GpuSpec, mem_fraction: float = JAX_DEFAULT_MEM_FRACTION) -> int:
    return int(min(mem_fraction * spec.device_memory_bytes, spec.device_memory_bytes - RUNTIME_RESERVE_BYTES))


# ------------------------------------------------------------------------------------------------- the plugin


def _has_module(name: str) -> bool:
    """Whether ``name`` can be imported; False too when its parent package is absent (find_spec raises then)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def gpu_compile_unavailable(cudnn: bool = False) -> str | None:
    """None when this host can compile for GPUs ahead of time, else what is missing and how to install it."""
    hint = "pip install 'jax-distill[gpu-plan]'"
    if not _has_module("jax_plugins.xla_cuda12"):
        return f"the CUDA PJRT plugin (jax-cuda12-plugin, jax-cuda12-pjrt) is not installed: {hint}"
    try:
        import jaxlib

        pjrt = importlib.metadata.version("jax-cuda12-pjrt")
        if pjrt != jaxlib.__version__:
            return f"jax-cuda12-pjrt {pjrt} does not match jaxlib {jaxlib.__version__}: reinstall it at that version"
    except importlib.metadata.PackageNotFoundError:
        return f"jax-cuda12-pjrt is not installed: {hint}"
    if not _ptxas():
        return f"ptxas not found (nvidia-cuda-nvcc-cu12): {hint}"
    if cudnn and not _has_module("nvidia.cudnn"):
        return f"cuDNN attention needs cuDNN (nvidia-cudnn-cu12) at compile time: {hint}"
    return None


def _ptxas() -> str | None:
    spec = importlib.util.find_spec("nvidia.cuda_nvcc") if _has_module("nvidia.cuda_nvcc") else None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "bin" / "ptxas").is_file():
            return str(Path(root) / "bin" / "ptxas")
    return shutil.which("ptxas")


def gpu_devices(topo: GpuTopology, spec: GpuSpec):
    """Abstract GPUs of ``topo`` (device ids are node-major: node i holds ids i*G .. i*G+G-1)."""
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="cuda", target_config=spec.text, topology=topo.xla_topology)
    except NotImplementedError as err:
        raise RuntimeError("the CUDA plugin did not register: set JAX_PLATFORMS=cpu before jax is imported (with "
                           "the CUDA plugin installed and no GPU, JAX otherwise drops the plugin when it fails to "
                           "initialise a GPU)") from err
    return desc.devices


# ------------------------------------------------------------------------------------------------------ plans


@dataclass
class GpuPlanResult:
    topology: str
    gpu: str
    nodes: int
    gpus_per_node: int
    chips: int
    mesh: dict[str, int]
    fits: bool
    per_chip_bytes: int | None  # compiled peak per GPU (about arguments + temporaries)
    argument_bytes: int | None
    temp_bytes: int | None
    hbm_bytes: int  # the GPU's memory as the target spec gives it
    usable_bytes: int  # what JAX may allocate: min(mem_fraction x HBM, HBM - runtime reserve)
    mem_fraction: float
    runtime_reserve_bytes: int
    tokens_per_step: int
    flops_per_step: float  # analytic model FLOPs (6N + causal attention)
    flops_per_token: float
    step_time_s: float  # at the assumed MFU
    assumed_mfu: float
    tokens_per_second: float
    compile_seconds: float
    roofline: dict[str, Any] = field(default_factory=dict)
    roofline_step_s: float | None = None  # compute and collectives overlapped, at peak rates (a lower bound)
    roofline_mfu: float | None = None  # model FLOPs / (GPUs x peak x roofline step): an upper bound on MFU
    decode: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compile_for_gpus(fn, args, compute_capability: str = "9.0"):
    """Lower and compile ``fn`` for the abstract GPUs its arguments are sharded over (traced as for a GPU of
    ``compute_capability``, which cuDNN attention checks); (compiled, seconds)."""
    from jax_distill.model.attention import cudnn_target

    t0 = time.perf_counter()
    with cudnn_target(compute_capability):
        lowered = fn.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def plan_gpu_training(model_cfg, topo: GpuTopology, *, seq_len: int, batch_size: int, mesh_cfg=None,
                      grad_accum: int = 1, assumed_mfu: float = 0.4, specs_dir: str | Path | None = None,
                      mem_fraction: float = JAX_DEFAULT_MEM_FRACTION, with_roofline: bool = True) -> GpuPlanResult:
    """Compile stage training for ``topo``'s GPUs and report memory per GPU, fit and a roofline step time."""
    import numpy as np
    from jax.sharding import Mesh

    from jax_distill.model.flops import train_flops_per_token
    from jax_distill.sharding import MESH_AXES, MeshConfig
    from jax_distill.train.step import abstract_train_step

    cfg = model_cfg.resolve()
    spec = load_gpu_spec(topo.kind, specs_dir)
    mesh_cfg = mesh_cfg or MeshConfig(data=1, fsdp=-1, tensor=1)
    devices = gpu_devices(topo, spec)
    mesh = Mesh(np.asarray(devices).reshape(mesh_cfg.shape(len(devices))), MESH_AXES)
    fn, args = abstract_train_step(cfg, mesh, batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum)
    compiled, compile_s = compile_for_gpus(fn, args, spec.compute_capability)
    mem = compiled.memory_analysis()
    peak = int(mem.peak_memory_in_bytes)
    usable = usable_bytes(spec, mem_fraction)
    tokens = batch_size * seq_len
    fpt = train_flops_per_token(cfg, seq_len)
    flops = fpt * tokens
    step_time = flops / (topo.chips * topo.chip.peak_bf16_flops * assumed_mfu)
    result = GpuPlanResult(
        topology=topo.name, gpu=spec.description, nodes=topo.nodes, gpus_per_node=topo.gpus_per_node,
        chips=topo.chips, mesh=dict(mesh.shape), fits=peak <= usable, per_chip_bytes=peak,
        argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        hbm_bytes=spec.device_memory_bytes, usable_bytes=usable, mem_fraction=mem_fraction,
        runtime_reserve_bytes=RUNTIME_RESERVE_BYTES, tokens_per_step=tokens, flops_per_step=flops,
        flops_per_token=fpt, step_time_s=step_time, assumed_mfu=assumed_mfu, tokens_per_second=tokens / step_time,
        compile_seconds=compile_s)
    if not result.fits:
        result.error = (f"peak {peak / GiB:.1f} GiB per GPU exceeds the {usable / GiB:.1f} GiB JAX may allocate "
                        f"({mem_fraction:.0%} of {spec.device_memory_bytes / GiB:.1f} GiB)")
    if with_roofline:
        rl = roofline(compiled.as_text(), gpu_rates(topo, spec))
        result.roofline = rl.as_dict()
        result.roofline_step_s = rl.overlapped_s
        if rl.overlapped_s > 0:
            result.roofline_mfu = flops / (topo.chips * topo.chip.peak_bf16_flops * rl.overlapped_s)
    return result
