"""`jax-distill plan`: will this model and stage fit a Cloud TPU slice or a GPU cluster, and how fast would it run?"""

from __future__ import annotations

import argparse

HELP = "compile the training step ahead of time for a TPU slice or GPU nodes: per-chip memory, fit, FLOPs, step time"
DESCRIPTION = """Compile the real sharded training step (and the sampler's decode step) for a TPU slice or for NVIDIA GPU
nodes from this CPU host, without the accelerator and without allocating. TPU slices (v5p-N, v5e-N, v6e-N) need libtpu
(pip install 'jax-distill[tpu]'); GPU topologies ([NODESx]GPUSxKIND: 8xh100, 2x8xh100, 8xa100, 8xh200, 8xb200) need
the CUDA PJRT plugin (pip install 'jax-distill[gpu-plan]') and XLA GPU target specs (--gpu-specs). Reports per-chip peak
memory against the device's memory, whether it fits, tokens and analytic FLOPs per step (6N + causal attention), and
the step time and throughput implied by an assumed MFU; for GPUs also a roofline step time over the compiled program."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model preset, e.g. qwen2.5-math-72b (FSDP over all chips, 1 sequence per chip)")
    src.add_argument("--config", help="run config YAML: model, mesh, batch and sequence length of a stage")
    p.add_argument("--topology", required=True,
                   help="TPU: v5p-N, v5e-N (v5litepod-N) or v6e-N; GPU: [NODESx]GPUSxKIND, KIND in a100, h100, "
                        "h200, b200 (8xh100 = one node of 8 H100s, 8x8xh100 = 8 such nodes)")
    p.add_argument("--seq-len", type=int, help="sequence length (default: the stage's data.seq_len, else 16384)")
    p.add_argument("--stage", type=int, default=2, help="stage number in the config (default 2)")
    p.add_argument("--batch-size", type=int, help="global batch in sequences (default: the stage's, else chips)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the step-time estimate (default 0.4)")
    p.add_argument("--remat", default=None, help="override the remat policy (none, full, dots)")
    p.add_argument("--attention", default=None, choices=["xla", "chunked", "dot_product", "cudnn", "splash"],
                   help="override the attention implementation (with --model: cudnn on GPUs, splash on TPUs)")
    p.add_argument("--decode", action="store_true", help="also compile the sampler's decode step (batch 8, 32k)")
    p.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=True,
                   help="TPU: estimate the step time and MFU from the compiler's cost model (1- and 2-layer unrolled "
                        "compiles, splash kernels added; see docs/cost.md) (default: on)")
    p.add_argument("--compiler-flops", action="store_true",
                   help="TPU: also report the compiler's FLOP count (from the same compiles as --estimate)")
    p.add_argument("--gpu-specs", metavar="DIR", default=None,
                   help="GPU: folder of XLA GpuTargetConfigProto files (default: $JAX_DISTILL_GPU_SPECS, else "
                        "../shared/data/gpu_specs beside the repository)")
    p.add_argument("--mem-fraction", type=float, default=None,
                   help="GPU: the XLA_PYTHON_CLIENT_MEM_FRACTION the run will use (default 0.75, JAX's default)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of --config")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jax_distill.model.config import ModelConfig
    from jax_distill.plan.gpu import is_gpu_topology, parse_gpu_topology
    from jax_distill.plan.topology import libtpu_available, parse_topology
    from jax_distill.sharding import MeshConfig

    gpu = is_gpu_topology(args.topology)
    try:
        topo = parse_gpu_topology(args.topology) if gpu else parse_topology(args.topology)
    except ValueError as err:
        raise SystemExit(f"--topology: {err}") from None
    if not gpu and not libtpu_available():
        raise SystemExit("plan needs libtpu to compile for TPUs: pip install 'jax-distill[tpu]'")
    if args.config:
        from jax_distill.config import load_config
        from jax_distill.train.config import RunConfig

        cfg = load_config(RunConfig, args.config, args.overrides)
        if not 1 <= args.stage <= len(cfg.stages):
            raise SystemExit(f"--stage {args.stage}: {args.config} has {len(cfg.stages)} stage(s)")
        stage = cfg.stages[args.stage - 1]
        model_cfg, mesh_cfg = cfg.model, cfg.mesh
        seq_len = args.seq_len or stage.data.seq_len
        batch = args.batch_size or cfg.stage_batch_size(stage)
        grad_accum = cfg.train.grad_accum
    else:
        seq_len = args.seq_len or 16384
        # What the shipped long-sequence configs run: bf16 compute, full remat, splash attention on TPUs, cuDNN's
        # flash attention on GPUs (as configs/*v5p*.yaml and configs/*8xh100.yaml).
        model_cfg = ModelConfig(preset=args.model, dtype="bfloat16", remat="full",
                                attention="cudnn" if gpu else "splash")
        mesh_cfg = MeshConfig(data=1, fsdp=-1, tensor=1)
        batch = args.batch_size or topo.chips
        grad_accum = 1
    if args.remat:
        model_cfg = dataclasses.replace(model_cfg, remat=args.remat)
    if args.attention:
        model_cfg = dataclasses.replace(model_cfg, attention=args.attention)
    from flax import nnx

    with nnx.logical_axis_rules(mesh_cfg.axis_rules()):  # the run's sharding rules, as training applies them
        if gpu:
            return _run_gpu(args, topo, model_cfg, mesh_cfg, seq_len, batch, grad_accum)
        from jax_distill.plan.aot import plan_training

        result = plan_training(model_cfg, topo, seq_len=seq_len, batch_size=batch, mesh_cfg=mesh_cfg,
                               grad_accum=grad_accum, assumed_mfu=args.mfu,
                               decode_batch=8 if args.decode else None, decode_len=32768 if args.decode else None,
                               compiler_flops=args.compiler_flops, estimate=args.estimate)
    d = _describe(result.as_dict(), args, model_cfg, seq_len)
    if args.json:
        print(json.dumps(d))
        return 0
    gib = 2**30
    mem = f"{result.per_chip_bytes / gib:.1f} GiB" if result.per_chip_bytes else "n/a"
    print(f"{d['model']} on {topo.name} ({topo.chips} x {topo.chip.name}, mesh {result.mesh})")
    print(f"  fits: {result.fits}  peak per chip: {mem} of {topo.hbm_bytes / gib:.0f} GiB HBM"
          + (f"  ({result.error})" if result.error else ""))
    print(f"  tokens/step: {result.tokens_per_step:,}  model FLOPs/step: {result.flops_per_step:.3e} "
          f"(6N + causal attention)")
    print(f"  at {result.assumed_mfu:.0%} MFU: {result.step_time_s:.2f} s/step, {result.tokens_per_second:,.0f} tokens/s")
    if result.estimate:
        e = result.estimate
        print(f"  estimated step: {e['step_seconds']:.2f} s = XLA {e['xla_seconds']:.2f} s + Pallas kernels "
              f"{e['kernel_seconds']:.2f} s (compiler cost model at {e['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, "
              f"{e['hbm_bytes_per_s'] / 1e12:.2f} TB/s), MFU {e['mfu']:.0%} of {topo.chip.peak_bf16_flops / 1e12:.0f} "
              "TFLOP/s peak")
        if e["loops_left"]:
            print(f"  warning: {e['loops_left']} loop(s) left in the unrolled program, each counted once: the "
                  "estimate is low (attention 'chunked' loops over key blocks; 'splash' does not)")
    if args.compiler_flops and result.compiler_flops_per_step:
        print(f"  compiler FLOPs/step (extrapolated, kernels added): {result.compiler_flops_per_step:.3e}")
    if result.decode:
        print(f"  decode step: {result.decode}")
    for w in d["warnings"]:
        print(f"  warning: {w}")
    print(f"  compiled in {result.compile_seconds:.0f} s")
    return 0


def _describe(d: dict, args: argparse.Namespace, model_cfg, seq_len: int) -> dict:
    d["model"] = model_cfg.preset or args.config
    d["attention"], d["remat"] = model_cfg.attention, model_cfg.remat
    ctx = model_cfg.resolve().max_position_embeddings
    d["warnings"] = [] if seq_len <= ctx else [
        f"seq_len {seq_len} exceeds the model's max_position_embeddings {ctx}: training refuses it until the run "
        "config sets model.max_position_embeddings and a larger model.rope_theta"]
    return d


def _run_gpu(args: argparse.Namespace, topo, model_cfg, mesh_cfg, seq_len: int, batch: int, grad_accum: int) -> int:
    import json

    from jax_distill.plan.gpu import JAX_DEFAULT_MEM_FRACTION, gpu_compile_unavailable, plan_gpu_training

    if args.compiler_flops:
        raise SystemExit("--compiler-flops is TPU-only (GPU executables report no cost analysis); the GPU plan "
                         "reports a roofline over the compiled program instead")
    why = gpu_compile_unavailable(cudnn=model_cfg.attention == "cudnn")
    if why:
        raise SystemExit(f"plan cannot compile for GPUs here: {why}")
    mem_fraction = args.mem_fraction if args.mem_fraction is not None else JAX_DEFAULT_MEM_FRACTION
    try:
        result = plan_gpu_training(model_cfg, topo, seq_len=seq_len, batch_size=batch, mesh_cfg=mesh_cfg,
                                   grad_accum=grad_accum, assumed_mfu=args.mfu, specs_dir=args.gpu_specs,
                                   mem_fraction=mem_fraction, decode_batch=8 if args.decode else None,
                                   decode_len=32768 if args.decode else None)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    d = _describe(result.as_dict(), args, model_cfg, seq_len)
    if args.json:
        print(json.dumps(d))
        return 0
    gib = 2**30
    where = f"{topo.nodes} node{'s' if topo.nodes > 1 else ''} x {topo.gpus_per_node} {result.gpu}"
    print(f"{d['model']} on {topo.name} ({where}, mesh {result.mesh}, attention {model_cfg.attention}, "
          f"remat {model_cfg.remat})")
    print(f"  fits: {result.fits}  peak per GPU: {result.per_chip_bytes / gib:.1f} GiB (arguments "
          f"{result.argument_bytes / gib:.1f} + temporaries {result.temp_bytes / gib:.1f}) of "
          f"{result.usable_bytes / gib:.1f} GiB usable ({result.mem_fraction:.0%} JAX memory fraction of "
          f"{result.hbm_bytes / gib:.1f} GiB)" + (f"  ({result.error})" if result.error else ""))
    print(f"  tokens/step: {result.tokens_per_step:,}  model FLOPs/step: {result.flops_per_step:.3e} "
          f"(6N + causal attention)")
    print(f"  at {result.assumed_mfu:.0%} MFU: {result.step_time_s:.2f} s/step, {result.tokens_per_second:,.0f} tokens/s")
    rl = result.roofline
    if rl:
        print(f"  roofline per GPU at peak rates: kernels {rl['compute_s']:.3f} s (matmul {rl['matmul_s']:.3f}, "
              f"attention {rl['attention_s']:.3f}, memory-bound {rl['memory_s']:.3f}), collectives "
              f"{rl['collective_s']:.3f} s (NVLink {rl['nvlink_s']:.3f}, network {rl['network_s']:.3f})")
        print(f"  roofline step: {rl['overlapped_s']:.3f} s overlapped .. {rl['serial_s']:.3f} s serial; "
              f"at most {result.roofline_mfu:.0%} MFU")
        for w in rl["warnings"]:
            print(f"  roofline: {w}")
    if result.decode:
        print(f"  decode step: {result.decode}")
    for w in d["warnings"]:
        print(f"  warning: {w}")
    print(f"  compiled in {result.compile_seconds:.0f} s")
    return 0
