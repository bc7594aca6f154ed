"""`jax-distill demo`: the whole recipe in minutes on a laptop CPU, offline."""

from __future__ import annotations

import argparse
import os

HELP = "end-to-end demo on the CPU: teacher data, tokenizer, tiny student, stage 1 + stage 2, evaluation"
DESCRIPTION = """Run the recipe end to end on this machine, offline, in a few minutes: a programmatic teacher writes
arithmetic word problems (short solutions for stage 1, long checked traces for stage 2), a byte-level BPE tokenizer
is trained, and a tiny Qwen2 student goes through both SFT stages on a mesh over the host's devices, with held-out
accuracy measured by the real sampler and grader before training and after each stage."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage1-steps", type=int, help="override the stage-1 step count")
    p.add_argument("--stage2-steps", type=int, help="override the stage-2 step count")
    p.add_argument("--heldout", type=int, help="number of held-out problems")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    # One XLA host device per core, so the demo's mesh really spans the machine (must precede importing jax).
    for flag, value in (("--stage1-steps", args.stage1_steps), ("--stage2-steps", args.stage2_steps),
                        ("--heldout", args.heldout)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} {value}: must be >= 1")
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={max(1, os.cpu_count() or 1)}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import logging

    from jax_distill.demo.run import DemoConfig, report_table, run_demo

    logging.basicConfig(level=logging.WARNING)
    d = DemoConfig(out=args.out, seed=args.seed, progress=not args.no_progress)
    if args.stage1_steps is not None:
        d.stage1_steps = args.stage1_steps
    if args.stage2_steps is not None:
        d.stage2_steps = args.stage2_steps
    if args.heldout is not None:
        d.n_heldout = args.heldout
    report = run_demo(d)
    print(report_table(report))
    print(f"report: {args.out}/report.json, manifest: {args.out}/manifest.json, TensorBoard: {args.out}/train/tb")
    return 0
