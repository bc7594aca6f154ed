"""`jax-distill plan`: will this model and stage fit a Cloud TPU slice, and how fast would it run?"""

from __future__ import annotations

import argparse

HELP = "compile the training step ahead of time for a Cloud TPU slice: per-chip memory, fit, FLOPs, step time"
DESCRIPTION = """Compile the real sharded training step (and the sampler's decode step) for a TPU topology from this
CPU host, without a TPU and without allocating (needs libtpu: pip install 'jax-distill[tpu]'). Reports per-chip peak
memory against HBM, whether it fits, tokens and analytic FLOPs per step (6N + causal attention), and the step time
and throughput implied by an assumed MFU."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model preset, e.g. qwen2.5-math-72b (FSDP over all chips, 1 sequence per chip)")
    src.add_argument("--config", help="run config YAML: model, mesh, batch and sequence length of a stage")
    p.add_argument("--topology", required=True, help="v5p-N, v5e-N (v5litepod-N) or v6e-N")
    p.add_argument("--seq-len", type=int, help="sequence length (default: the stage's data.seq_len, else 16384)")
    p.add_argument("--stage", type=int, default=2, help="stage number in the config (default 2)")
    p.add_argument("--batch-size", type=int, help="global batch in sequences (default: the stage's, else chips)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the step-time estimate (default 0.4)")
    p.add_argument("--remat", default=None, help="override the remat policy (none, full, dots)")
    p.add_argument("--decode", action="store_true", help="also compile the sampler's decode step (batch 8, 32k)")
    p.add_argument("--compiler-flops", action="store_true",
                   help="also report the compiler's FLOP count (extrapolated from 1- and 2-layer compiles)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of --config")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jax_distill.model.config import ModelConfig
    from jax_distill.plan.aot import plan_training
    from jax_distill.plan.topology import libtpu_available, parse_topology
    from jax_distill.sharding import MeshConfig

    topo = parse_topology(args.topology)
    if not libtpu_available():
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
        # What the shipped long-sequence configs run: bf16 compute, full remat, and query-chunked attention past 4k
        # (a [S, S] score matrix per head is what runs out of memory first at 16k).
        model_cfg = ModelConfig(preset=args.model, dtype="bfloat16", remat="full",
                                attention="chunked" if seq_len > 4096 else "dot_product")
        mesh_cfg = MeshConfig(data=1, fsdp=-1, tensor=1)
        batch = args.batch_size or topo.chips
        grad_accum = 1
    if args.remat:
        model_cfg = dataclasses.replace(model_cfg, remat=args.remat)
    from flax import nnx

    with nnx.logical_axis_rules(mesh_cfg.axis_rules()):  # the run's sharding rules, as training applies them
        result = plan_training(model_cfg, topo, seq_len=seq_len, batch_size=batch, mesh_cfg=mesh_cfg,
                               grad_accum=grad_accum, assumed_mfu=args.mfu,
                               decode_batch=8 if args.decode else None, decode_len=32768 if args.decode else None,
                               compiler_flops=args.compiler_flops)
    d = result.as_dict()
    d["model"] = model_cfg.preset or args.config
    d["attention"], d["remat"] = model_cfg.attention, model_cfg.remat
    ctx = model_cfg.resolve().max_position_embeddings
    d["warnings"] = [] if seq_len <= ctx else [
        f"seq_len {seq_len} exceeds the model's max_position_embeddings {ctx}: training refuses it until the run "
        "config sets model.max_position_embeddings and a larger model.rope_theta"]
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
    if result.compiler_flops_per_step:
        print(f"  compiler FLOPs/step (extrapolated): {result.compiler_flops_per_step:.3e}")
    if result.decode:
        print(f"  decode step: {result.decode}")
    for w in d["warnings"]:
        print(f"  warning: {w}")
    print(f"  compiled in {result.compile_seconds:.0f} s")
    return 0
