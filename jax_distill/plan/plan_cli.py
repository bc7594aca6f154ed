"""`jax-distill plan`: will this model and stage fit a Cloud TPU slice or a GPU cluster, and how fast would it run?"""

from __future__ import annotations

import argparse

HELP = ("compile the training step (or eval's decode, --eval) ahead of time for a TPU slice or GPU nodes: per-chip "
        "memory, fit, FLOPs, step time")
DESCRIPTION = """Compile the real sharded training step (or the eval engine's decode) for a TPU slice or for NVIDIA GPU
nodes from this CPU host, without the accelerator and without allocating. TPU slices (v5p-N, v5e-N, v6e-N) need libtpu
(pip install 'jax-distill[tpu]'); GPU topologies ([NODESx]GPUSxKIND: 8xh100, 2x8xh100, 8xa100, 8xh200, 8xb200) need
the CUDA PJRT plugin (pip install 'jax-distill[gpu-plan]') and XLA GPU target specs (--gpu-specs). Reports per-chip peak
memory against the device's memory, whether it fits, tokens and analytic FLOPs per step (6N + causal attention), and
the step time and throughput implied by an assumed MFU; for GPUs also a roofline step time over the compiled program.
--eval (alone) or --decode (beside training) plans evaluation instead: the eval engine's decode chunk and prefill on
a decode mesh (weights on tensor, rows on data), e.g.
  jax-distill plan --model qwen2.5-math-72b --topology v5p-128 --eval --decode-mesh data=8,tensor=8"""


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
    p.add_argument("--decode", action="store_true",
                   help="also plan eval: the eval engine's decode chunk and prefill compiled on a decode mesh "
                        "(weights, KV cache and temporaries per chip; see --decode-*)")
    p.add_argument("--eval", action="store_true", help="plan eval only (as --decode, without the training step)")
    p.add_argument("--decode-mesh", metavar="data=D,tensor=T",
                   help="eval's decode mesh (default: tensor = the largest power of two <= 8 dividing the chips and "
                        "the kv heads, data = the rest), e.g. data=8,tensor=8 for a v5p-128")
    p.add_argument("--decode-rule", action="append", default=[], metavar="LOGICAL=AXES",
                   help="override a decode sharding rule (sharding.DECODE_RULES), e.g. kv_heads=null")
    p.add_argument("--decode-slots", type=int, default=64, help="decode slots (eval --batch-size; default 64)")
    p.add_argument("--decode-len", type=int, default=33792,
                   help="KV cache slots per row: prompt + output budget (default 33792: 32k output + 1k)")
    p.add_argument("--decode-prompt-len", type=int, default=512,
                   help="prompt length of the prefill compiled for every slot at once (default 512)")
    p.add_argument("--decode-scan-layers", action="store_true",
                   help="plan eval --scan-layers (layer scan, stacked cache: weights held once); default: layers "
                        "unrolled, as eval runs by default (a per-layer copy of the weights is held too)")
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
    if not args.eval:
        _check_batch(batch, grad_accum, mesh_cfg, topo)
    if args.remat:
        model_cfg = dataclasses.replace(model_cfg, remat=args.remat)
    if args.attention:
        model_cfg = dataclasses.replace(model_cfg, attention=args.attention)
    from flax import nnx

    if args.eval:
        return _run_eval(args, topo, gpu, model_cfg)
    with nnx.logical_axis_rules(mesh_cfg.axis_rules()):  # the run's sharding rules, as training applies them
        if gpu:
            return _run_gpu(args, topo, model_cfg, mesh_cfg, seq_len, batch, grad_accum)
        from jax_distill.plan.aot import plan_training

        result = plan_training(model_cfg, topo, seq_len=seq_len, batch_size=batch, mesh_cfg=mesh_cfg,
                               grad_accum=grad_accum, assumed_mfu=args.mfu, compiler_flops=args.compiler_flops,
                               estimate=args.estimate)
    if args.decode:
        result.decode = _plan_eval(args, topo, gpu, model_cfg)
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
    e = result.estimate
    if e and e["estimator"] == "roofline":
        print(f"  estimated step: {e['step_seconds']:.2f} s = XLA {e['xla_seconds']:.2f} s (compute "
              f"{e['roofline_compute_seconds']:.2f} s, collectives {e['roofline_collective_seconds']:.2f} s, "
              f"overlapped) + Pallas kernels {e['kernel_seconds']:.2f} s, our TPU roofline at the datasheet's "
              f"{e['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s and {e['hbm_bytes_per_s'] / 1e12:.2f} TB/s; MFU "
              f"{e['mfu']:.0%} (libtpu's cost model is unusable here: {e['libtpu_per_layer_seconds']:.3g} s per "
              "layer, see docs/cost.md)")
    elif e:
        print(f"  estimated step: {e['step_seconds']:.2f} s = XLA {e['xla_seconds']:.2f} s + Pallas kernels "
              f"{e['kernel_seconds']:.2f} s (compiler cost model at {e['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, "
              f"{e['hbm_bytes_per_s'] / 1e12:.2f} TB/s), MFU {e['mfu']:.0%} of {topo.chip.peak_bf16_flops / 1e12:.0f} "
              f"TFLOP/s peak; our TPU roofline: {e['roofline_seconds']:.2f} s")
    if e and e["loops_left"]:
        print(f"  warning: {e['loops_left']} loop(s) left in the unrolled program, each counted once by libtpu: "
              "its estimate is low (attention 'chunked' loops over key blocks; 'splash' does not)")
    if args.compiler_flops and result.compiler_flops_per_step:
        print(f"  compiler FLOPs/step (extrapolated, kernels added): {result.compiler_flops_per_step:.3e}")
    if result.decode:
        print("\n".join(_eval_lines(result.decode)))
    for w in d["warnings"]:
        print(f"  warning: {w}")
    print(f"  compiled in {result.compile_seconds:.0f} s")
    return 0


def _plan_eval(args: argparse.Namespace, topo, gpu: bool, model_cfg) -> dict:
    """The eval configuration (plan/decode.py) on ``topo``'s chips: TPU HBM, or what JAX may allocate on a GPU."""
    from jax_distill.plan.decode import default_decode_mesh, plan_eval
    from jax_distill.sharding import parse_mesh_spec

    try:
        mesh_cfg = parse_mesh_spec(args.decode_mesh or "", args.decode_rule, decode=True)
    except ValueError as err:
        raise SystemExit(f"--decode-mesh/--decode-rule: {err}") from None
    if not args.decode_mesh:
        rules = mesh_cfg.rules
        mesh_cfg = default_decode_mesh(topo.chips, model_cfg.resolve().num_key_value_heads)
        mesh_cfg.rules = rules
    kw = {"mesh_cfg": mesh_cfg, "slots": args.decode_slots, "cache_len": args.decode_len,
          "prompt_len": args.decode_prompt_len, "unroll_layers": not args.decode_scan_layers}
    try:
        if gpu:
            import numpy as np
            from jax.sharding import Mesh

            from jax_distill.plan import gpu as gpu_plan
            from jax_distill.sharding import MESH_AXES

            why = gpu_plan.gpu_compile_unavailable()
            if why:
                raise SystemExit(f"plan cannot compile for GPUs here: {why}")
            spec = gpu_plan.load_gpu_spec(topo.kind, args.gpu_specs)
            frac = args.mem_fraction if args.mem_fraction is not None else gpu_plan.JAX_DEFAULT_MEM_FRACTION
            return plan_eval(model_cfg, gpu_plan.gpu_devices(topo, spec), gpu_plan.usable_bytes(spec, frac),
                             mesh_builder=lambda c, d: Mesh(np.asarray(d).reshape(c.shape(len(d))), MESH_AXES), **kw)
        from jax_distill.plan.topology import topology_devices

        return plan_eval(model_cfg, topology_devices(topo), topo.hbm_bytes, **kw)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"eval plan: {err}") from None


def _eval_lines(e: dict) -> list[str]:
    gib = 2**30
    mesh = ",".join(f"{k}={v}" for k, v in e["mesh"].items() if k != "fsdp")
    head = (f"  eval on decode mesh {mesh}: {e['slots']} slots x {e['cache_len']:,} cache slots, layers "
            f"{'unrolled' if e['unroll_layers'] else 'scanned'}; fits: {e['fits']}")
    sizes = (f"    per chip: weights {e['weights_bytes_per_chip'] / gib:.1f} GiB, KV cache "
             f"{e['cache_bytes_per_chip'] / gib:.1f} GiB, of {e['capacity_bytes'] / gib:.1f} GiB")
    lines = [head, sizes]
    for name in ("decode", "prefill"):
        r = e[name]
        what = (f"{r['per_chip_bytes'] / gib:.1f} GiB peak per chip (arguments {r['argument_bytes'] / gib:.1f} + "
                f"temporaries {r['temp_bytes'] / gib:.1f}"
                + (f" + {e['held_outside_bytes'] / gib:.1f} stacked weights held beside the per-layer copies"
                   if e["held_outside_bytes"] else "") + ")") if "error" not in r else r["error"]
        label = "decode chunk" if name == "decode" else f"prefill of {e['slots']} x {e['prompt_len']}"
        lines.append(f"    {label}: fits {r['fits']}: {what}; compiled in {r['compile_seconds']:.0f} s")
    return lines


def _run_eval(args: argparse.Namespace, topo, gpu: bool, model_cfg) -> int:
    import json

    e = _plan_eval(args, topo, gpu, model_cfg)
    ctx = model_cfg.resolve().max_position_embeddings
    warnings = [] if args.decode_len <= ctx else [
        (f"--decode-len {args.decode_len} exceeds the model's max_position_embeddings {ctx} (the checkpoint was "
         "not trained on positions that far)")]
    d = {"model": model_cfg.preset or args.config, "topology": topo.name, "chips": topo.chips, **e,
         "warnings": warnings}
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"{d['model']} eval on {topo.name} ({topo.chips} chips)")
    print("\n".join(_eval_lines(e)))
    for w in d["warnings"]:
        print(f"  warning: {w}")
    return 0


def _describe(d: dict, args: argparse.Namespace, model_cfg, seq_len: int) -> dict:
    d["model"] = model_cfg.preset or args.config
    d["attention"], d["remat"] = model_cfg.attention, model_cfg.remat
    ctx = model_cfg.resolve().max_position_embeddings
    d["warnings"] = [] if seq_len <= ctx else [
        f"seq_len {seq_len} exceeds the model's max_position_embeddings {ctx}: training refuses it until the run "
        "config sets model.max_position_embeddings and a larger model.rope_theta"]
    return d


def _check_batch(batch: int, grad_accum: int, mesh_cfg, topo) -> None:
    """Refuse, naming --batch-size, a batch training could not split over the mesh (sharding.batch_split_error)."""
    from jax_distill.sharding import batch_split_error

    try:
        data, fsdp, _ = mesh_cfg.shape(topo.chips)
    except ValueError as err:
        raise SystemExit(f"mesh for {topo.name}: {err}") from None
    why = batch_split_error(batch, grad_accum, data * fsdp)
    if why:
        raise SystemExit(f"--batch-size {batch}: {why}")


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
                                   mem_fraction=mem_fraction)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    if args.decode:
        result.decode = _plan_eval(args, topo, gpu=True, model_cfg=model_cfg)
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
              f"{rl['collective_s']:.3f} s (NVLink {rl['link_s']:.3f}, network {rl['network_s']:.3f})")
        print(f"  roofline step: {rl['overlapped_s']:.3f} s overlapped .. {rl['serial_s']:.3f} s serial; "
              f"at most {result.roofline_mfu:.0%} MFU")
        for w in rl["warnings"]:
            print(f"  roofline: {w}")
    if result.decode:
        print("\n".join(_eval_lines(result.decode)))
    for w in d["warnings"]:
        print(f"  warning: {w}")
    print(f"  compiled in {result.compile_seconds:.0f} s")
    return 0
