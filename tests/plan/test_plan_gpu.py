"""GPU plans ahead of time (CUDA PJRT plugin, no GPU) and the roofline over compiled GPU programs.

The compile tests need `pip install 'jax-distill[gpu-plan]'` and the XLA GPU target specs in ../shared/data/gpu_specs
(or $JAX_DISTILL_GPU_SPECS); they are skipped, with the reason, where either is missing. The parsing tests run anywhere.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from jax_distill.cli import main
from jax_distill.model.config import ModelConfig
from jax_distill.model.flops import train_flops_per_token
from jax_distill.plan.gpu import (
    GPU_SPECS_ENV,
    JAX_DEFAULT_MEM_FRACTION,
    RUNTIME_RESERVE_BYTES,
    default_gpu_specs_dir,
    gpu_compile_unavailable,
    gpu_devices,
    gpu_rates,
    is_gpu_topology,
    load_gpu_spec,
    parse_gpu_topology,
    usable_bytes,
)
from jax_distill.plan.roofline import (
    ChipRates,
    Instr,
    parse_hlo,
    replica_groups,
    roofline,
)

GiB = 2**30
DATA = Path(__file__).parent / "data"
_WHY = gpu_compile_unavailable(cudnn=True)
_SPECS = default_gpu_specs_dir()
needs_gpu_compiler = pytest.mark.skipif(
    _WHY is not None or not (_SPECS / "h100_sxm.txtpb").is_file(),
    reason=f"cannot compile for GPUs here: {_WHY}" if _WHY else
    f"XLA GPU target specs not found in {_SPECS} (set {GPU_SPECS_ENV} or JAX_DISTILL_SHARED_DATA)")

H100 = ChipRates(peak_flops=989e12, hbm_bytes_per_s=3.35232e12, link_bytes_per_s=450e9, network_bytes_per_s=50e9,
                 chips_per_node=8)
H200 = ChipRates(peak_flops=989e12, hbm_bytes_per_s=4.8e12, link_bytes_per_s=450e9, network_bytes_per_s=50e9,
                 chips_per_node=8)


# ------------------------------------------------------------------------------------------ names and specs


def test_gpu_topology_names():
    t = parse_gpu_topology("8xh100")
    assert (t.nodes, t.gpus_per_node, t.chips, t.xla_topology, t.kind.key) == (1, 8, 8, "1x1x8", "h100")
    t = parse_gpu_topology("2x8xH100")
    assert (t.nodes, t.gpus_per_node, t.chips, t.xla_topology) == (2, 8, 16, "1x2x8")
    assert parse_gpu_topology("8x8xh100").chips == 64
    assert parse_gpu_topology("4xa100").kind.spec_file == "a100_sxm_80.txtpb"
    assert parse_gpu_topology("8xb200").chip.peak_bf16_flops == 2.25e15
    assert parse_gpu_topology("8xh200").kind.spec_file == "h200_sxm_derived.txtpb"
    for bad in ("8xh300", "3xh100", "h100", "0x8xh100", "8xh100x2", "16xh100"):
        with pytest.raises(ValueError, match="GPU"):
            parse_gpu_topology(bad)
    assert is_gpu_topology("8xh100") and is_gpu_topology("h100")
    assert not is_gpu_topology("v5p-128") and not is_gpu_topology("v5litepod-16")


def test_gpu_specs_folder_is_configurable(tmp_path, monkeypatch):
    spec = tmp_path / "h100_sxm.txtpb"
    spec.write_text('gpu_device_info {\n  memory_bandwidth: 3000000000000\n  device_memory_size: 85899345920\n'
                    '  cuda_compute_capability {\n    major: 9\n  }\n}\ndevice_description_str: "Test GPU"\n')
    monkeypatch.setenv(GPU_SPECS_ENV, str(tmp_path))
    assert default_gpu_specs_dir() == tmp_path
    s = load_gpu_spec(parse_gpu_topology("8xh100").kind)
    assert (s.description, s.device_memory_bytes, s.hbm_bytes_per_s) == ("Test GPU", 80 * GiB, 3e12)
    assert s.compute_capability == "9.0"
    # JAX preallocates 75% by default; near 1, the runtime's own reserve is what binds.
    assert usable_bytes(s) == int(0.75 * 80 * GiB)
    assert usable_bytes(s, 1.0) == 80 * GiB - RUNTIME_RESERVE_BYTES
    with pytest.raises(FileNotFoundError, match="--gpu-specs"):
        load_gpu_spec(parse_gpu_topology("8xa100").kind)
    monkeypatch.delenv(GPU_SPECS_ENV)
    monkeypatch.delenv("JAX_DISTILL_SHARED_DATA", raising=False)
    # the default is relative to the repository the package is imported from, not an absolute path of some machine
    from tests.conftest import REPO_ROOT

    assert default_gpu_specs_dir() == REPO_ROOT.parent / "shared" / "data" / "gpu_specs"


def test_plan_cli_rejects_unknown_gpu_topology(capsys):
    assert main(["plan", "--model", "qwen2.5-0.5b", "--topology", "8xh300"]) == 2
    assert "NODESx" in capsys.readouterr().err


# --------------------------------------------------------------------------------- roofline on HLO text


def _ins(attrs: str) -> Instr:
    return Instr("ag", "f32[8]", "all-gather-start", ["x"], attrs)


def test_replica_group_spellings():
    assert replica_groups(_ins("replica_groups={{0,1},{2,3}}, dimensions={0}"), 4) == [[0, 1], [2, 3]]
    assert replica_groups(_ins("replica_groups=[2,8]<=[16], dimensions={0}"), 16) == [list(range(8)),
                                                                                      list(range(8, 16))]
    across = replica_groups(_ins("replica_groups=[8,2]<=[2,8]T(1,0), dimensions={0}"), 16)
    assert across[0] == [0, 8] and across[7] == [7, 15]
    # the mesh-axes form XLA prints today: gather over axis_0 of an (8, 2) mesh laid out node-minor
    g = replica_groups(_ins("replica_groups=mesh['axis_0'=8,'axis_1'=2], device_ids=([2,8]T(1,0)) {'axis_0'}, "
                            "dimensions={0}"), 16)
    assert g == [list(range(8)), list(range(8, 16))]
    g = replica_groups(_ins("replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_0'}, dimensions={0}"), 16)
    assert g[0] == [0, 8] and len(g) == 8
    assert replica_groups(_ins("replica_groups={}, dimensions={0}"), 4) == [[0, 1, 2, 3]]


_DUS_HLO = """HloModule m, num_partitions=1

%fused_dus (p0: f32[64,1024], p1: f32[1,1024], p2: s32[]) -> f32[64,1024] {
  %p0 = f32[64,1024]{1,0} parameter(0)
  %p1 = f32[1,1024]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %c = s32[] constant(0)
  ROOT %dus = f32[64,1024]{1,0} dynamic-update-slice(%p0, %p1, %p2, %c)
}

%fused_ds (q0: f32[64,1024], q1: s32[]) -> f32[1,1024] {
  %q0 = f32[64,1024]{1,0} parameter(0)
  %q1 = s32[] parameter(1)
  %c = s32[] constant(0)
  %ds = f32[1,1024]{1,0} dynamic-slice(%q0, %q1, %c), dynamic_slice_sizes={1,1024}
  ROOT %neg = f32[1,1024]{1,0} negate(%ds)
}

ENTRY %main (a: f32[64,1024], u: f32[1,1024], i: s32[]) -> (f32[64,1024], f32[1,1024]) {
  %a = f32[64,1024]{1,0} parameter(0)
  %u = f32[1,1024]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %f = f32[64,1024]{1,0} fusion(%a, %u, %i), kind=kLoop, calls=%fused_dus
  %g = f32[1,1024]{1,0} fusion(%a, %i), kind=kLoop, calls=%fused_ds
  ROOT %t = (f32[64,1024]{1,0}, f32[1,1024]{1,0}) tuple(%f, %g)
}
"""


def test_roofline_counts_slices_and_in_place_updates_by_the_slice():
    comps, entry, n = parse_hlo(_DUS_HLO)
    assert entry == "main" and n == 1 and set(comps) == {"fused_dus", "fused_ds", "main"}
    r = roofline(_DUS_HLO, H100)
    row = 1024 * 4
    # update: read the row and the index, write the row in place; slice: read the row and the index, write the row
    assert r.hbm_bytes == (row + 4 + row) + (row + 4 + row)
    assert r.kernels == 2 and r.flops == 0 and r.collective_s == 0


# ----------------------------------------------------------------------------- compiled GPU programs


def _compile(fn, shapes, topology: str, axes=("x",), mesh_shape=None, in_specs=None, out_spec=None):
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    topo = parse_gpu_topology(topology)
    spec = load_gpu_spec(topo.kind)
    devices = gpu_devices(topo, spec)
    mesh = Mesh(np.asarray(devices).reshape(mesh_shape or (len(devices),)), axes)
    in_specs = in_specs or [P()] * len(shapes)
    args = [jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, p)) for (s, d), p in zip(shapes, in_specs)]
    jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, out_spec if out_spec is not None else P()))
    return jitted.lower(*args).compile(), gpu_rates(topo, spec)


@needs_gpu_compiler
def test_roofline_of_one_large_matmul():
    """8192^3 in bf16 on one H100: 2·8192^3 FLOPs at 989 TFLOP/s = 1.11 ms (its 384 MiB of traffic take 0.12 ms)."""
    import jax.numpy as jnp

    n = 8192
    compiled, rates = _compile(lambda a, b: a @ b, [((n, n), jnp.bfloat16)] * 2, "1xh100")
    assert compiled.cost_analysis() is None  # why the roofline exists
    r = roofline(compiled.as_text(), rates)
    assert r.flops == 2 * n**3
    assert r.hbm_bytes == 3 * n * n * 2
    assert r.compute_s == pytest.approx(2 * n**3 / 989e12, rel=1e-9)
    assert r.matmul_s == r.compute_s and r.collective_s == 0
    assert r.overlapped_s == pytest.approx(1.1117e-3, rel=1e-3)


@needs_gpu_compiler
def test_roofline_applies_while_trip_counts():
    import jax
    import jax.numpy as jnp

    n = 4096

    def ten_matmuls(a, b):
        return jax.lax.fori_loop(0, 10, lambda i, x: (x @ b).astype(jnp.bfloat16), a)

    compiled, rates = _compile(ten_matmuls, [((n, n), jnp.bfloat16)] * 2, "1xh100")
    r = roofline(compiled.as_text(), rates)
    assert r.flops == 10 * 2 * n**3
    assert r.matmul_s == pytest.approx(10 * 2 * n**3 / 989e12, rel=1e-9)


@needs_gpu_compiler
@pytest.mark.parametrize("topology, mesh_shape, shard, seconds", [
    # 8 GPUs of one node gather 32 MiB shards: each receives 7 shards over NVLink (450 GB/s one way)
    ("8xh100", (1, 8), ("n", "g"), 7 * 32 * 2**20 / 450e9),
    # 16 GPUs on 2 nodes, 16 MiB shards: 15 shards through 8 NICs of 50 GB/s per node (400 GB/s, under NVLink's 450)
    ("2x8xh100", (2, 8), ("n", "g"), 15 * 16 * 2**20 / 400e9),
    # across the 2 nodes only (8 pairs, one NIC each): one 128 MiB shard at 50 GB/s
    ("2x8xh100", (2, 8), "n", 128 * 2**20 / 50e9),
    # within each node only: 7 x 32 MiB over NVLink
    ("2x8xh100", (2, 8), "g", 7 * 32 * 2**20 / 450e9),
])
def test_roofline_of_one_all_gather(topology, mesh_shape, shard, seconds):
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    compiled, rates = _compile(lambda a: a, [((2**26,), jnp.float32)], topology, axes=("n", "g"),
                               mesh_shape=mesh_shape, in_specs=[P(shard)], out_spec=P())
    r = roofline(compiled.as_text(), rates)
    assert r.collectives == 1
    assert r.collective_s == pytest.approx(seconds, rel=1e-9)
    assert (r.network_s > 0) == (shard != "g" and topology.startswith("2x"))


@needs_gpu_compiler
def test_gpu_plan_small_model_on_8xh100(capsys):
    """The real training step of Qwen2.5-0.5B (cuDNN attention, FSDP over 8 H100s) compiles on this CPU host: about
    2.2 GiB per GPU, of which the float32 parameters and AdamW moments are 12 bytes x parameters / 8."""
    assert main(["plan", "--model", "qwen2.5-0.5b", "--topology", "8xh100", "--seq-len", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    spec_mem = load_gpu_spec(parse_gpu_topology("8xh100").kind).device_memory_bytes
    assert out["gpu"] == "NVIDIA H100 80GB HBM3" and out["hbm_bytes"] == spec_mem
    assert out["fits"] is True and out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert out["usable_bytes"] == int(JAX_DEFAULT_MEM_FRACTION * spec_mem)
    assert out["attention"] == "cudnn" and out["tokens_per_step"] == 8 * 1024
    params = ModelConfig(preset="qwen2.5-0.5b").resolve().param_count()
    assert out["argument_bytes"] == pytest.approx(12 * params / 8, rel=0.05)
    assert 1 * GiB < out["per_chip_bytes"] < 4 * GiB
    assert out["per_chip_bytes"] == pytest.approx(out["argument_bytes"] + out["temp_bytes"], rel=0.01)
    assert out["flops_per_step"] == pytest.approx(train_flops_per_token(ModelConfig(preset="qwen2.5-0.5b"), 1024)
                                                  * 8 * 1024)
    rl = out["roofline"]
    assert rl["flops"] > 0 and rl["attention_s"] > 0 and rl["link_s"] > 0 and rl["network_s"] == 0
    assert 0 < out["roofline_mfu"] < 1 and out["roofline_step_s"] == rl["overlapped_s"]


@needs_gpu_compiler
def test_gpu_plan_reports_does_not_fit(capsys):
    """7B with float32 AdamW on one H100: 16 bytes per parameter is past 75% of 80 GB, which the GPU compiler does not
    refuse, so the plan says so."""
    assert main(["plan", "--model", "qwen2.5-7b", "--topology", "1xh100", "--seq-len", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["per_chip_bytes"] > out["hbm_bytes"] > out["usable_bytes"]
    assert "exceeds" in out["error"]


def test_gpu_plan_without_the_plugin_says_what_to_install(monkeypatch, capsys):
    from jax_distill.plan import gpu

    monkeypatch.setattr(gpu, "gpu_compile_unavailable", lambda cudnn=False: "the CUDA PJRT plugin is not installed")
    assert main(["plan", "--model", "qwen2.5-0.5b", "--topology", "8xh100"]) == 2
    assert "plugin is not installed" in capsys.readouterr().err


# ------------------------------------------- programs compiled and measured on a real H200 (tests/plan/data)


def test_roofline_of_a_matmul_compiled_on_a_real_h200():
    """A real GPU's compile calls cuBLAS (with a 32 MiB workspace that is not traffic) where the AOT compile emits a
    Triton gemm: the same 2·8192^3 FLOPs and 384 MiB. The H200 ran it in 1.39 ms: 80% of the 1.11 ms roofline."""
    r = roofline((DATA / "h200_matmul_8192.hlo.txt").read_text(), H200)
    n = 8192
    assert r.flops == 2 * n**3 and r.hbm_bytes == 3 * n * n * 2
    assert r.compute_s == pytest.approx(2 * n**3 / 989e12, rel=1e-9)
    measured = json.loads((DATA / "h200_measured.json").read_text())["matmul_8192_bf16_s"]
    assert 1.0 < measured / r.compute_s < 1.5


def test_roofline_of_a_training_step_compiled_on_a_real_h200():
    """The real GPU's program (cuBLAS gemms, asynchronous slice fusions): the roofline is a lower bound, and the
    measured step took 1.7x it (Qwen2.5-0.5B, 4 x 4096 tokens, full remat, cuDNN attention)."""
    r = roofline(gzip.decompress((DATA / "h200_qwen2.5-0.5b_step.hlo.txt.gz").read_bytes()).decode(), H200)
    assert r.flops == pytest.approx(8.7293e13, rel=1e-4)
    assert r.compute_s == pytest.approx(0.139, rel=0.02) and r.collective_s == 0
    assert r.matmul_s > r.attention_s > 0 and r.memory_s > 0 and not r.warnings
    steps = json.loads((DATA / "h200_measured.json").read_text())["qwen2.5-0.5b_batch4_seq4096"]["step_s"]
    assert 1.2 < float(np.median(steps[1:])) / r.overlapped_s < 2.5


@needs_gpu_compiler
def test_gpu_plan_matches_the_real_h200():
    """The plan's AOT compile of that step, here without a GPU, predicts the real GPU's peak memory within 2% (the
    allocator's measured peak_bytes_in_use) and the roofline of the real program kernel by kernel."""
    from jax_distill.plan import gpu

    topo = parse_gpu_topology("1xh200")
    cfg = ModelConfig(preset="qwen2.5-0.5b", dtype="bfloat16", remat="full", attention="cudnn")
    plan = gpu.plan_gpu_training(cfg, topo, seq_len=4096, batch_size=4)
    measured = json.loads((DATA / "h200_measured.json").read_text())["qwen2.5-0.5b_batch4_seq4096"]
    assert plan.per_chip_bytes == pytest.approx(measured["peak_bytes_in_use"], rel=0.02)
    assert plan.per_chip_bytes == pytest.approx(measured["peak"], rel=0.01)  # the real GPU's own compile
    real = roofline(gzip.decompress((DATA / "h200_qwen2.5-0.5b_step.hlo.txt.gz").read_bytes()).decode(), H200)
    # The recorded program predates packed cuDNN attention: it passed the document mask as a dense bias
    # (fmhaScaleBiasSoftmax), which cuDNN cannot skip; the packed causal runs compute half the score tiles. Every
    # other kernel is the same program.
    assert plan.roofline["matmul_s"] == pytest.approx(real.matmul_s, rel=1e-6)
    assert plan.roofline["attention_s"] == pytest.approx(real.attention_s / 2, rel=1e-6)
    assert plan.roofline["memory_s"] == pytest.approx(real.memory_s, rel=0.02)


@needs_gpu_compiler
def test_gpu_plan_72b_on_8_nodes_of_8xh100(capsys):
    """The issue's multi-node command: Qwen2.5-Math-72B at 16k, FSDP over 64 H100s in 8 nodes, fits (about 47 GiB of
    the 59 GiB JAX may use per GPU), and its FSDP collectives cross nodes, so they go over the network."""
    assert main(["plan", "--model", "qwen2.5-math-72b", "--topology", "8x8xh100", "--seq-len", "16384", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and out["nodes"] == 8 and out["mesh"] == {"data": 1, "fsdp": 64, "tensor": 1}
    assert 40 * GiB < out["per_chip_bytes"] < out["usable_bytes"]
    rl = out["roofline"]
    assert rl["network_s"] > 0 and rl["link_s"] == 0 and 0 < out["roofline_mfu"] < 1
    assert any("max_position_embeddings 4096" in w for w in out["warnings"])
