"""`jax-distill train`: run SFT stage 1, stage 2, or both, from a config file with dotted overrides."""

from __future__ import annotations

import argparse

HELP = "two-stage SFT (format alignment, then distillation on teacher traces) on a device mesh"
DESCRIPTION = """Train the student. The config (configs/*.yaml) holds the model, the mesh, both stages, the optimizer and
checkpointing; any field can be overridden as dotted.key=value, e.g.  train.steps=50 checkpoint.dir=/tmp/ck seed=1.
Stage 2 starts from stage 1's final weights. A SIGTERM (preemption) writes a checkpoint and exits 0; rerun with
--resume to continue exactly where it stopped."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML, local or gs:// (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--stage", default="all", help="1, 2, ... or 'all' (default: all, in order)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and metrics still written)")


def run(args: argparse.Namespace) -> int:
    import logging

    from jax_distill.config import load_config
    from jax_distill.train.config import RunConfig

    cfg = load_config(RunConfig, args.config, args.overrides)  # validated before the training stack is imported
    if args.stage == "all":
        stages = None
    else:
        try:
            stages = [int(s) - 1 for s in args.stage.split(",")]
        except ValueError:
            raise SystemExit(f"--stage: expected 1, 2, ... or 'all', got {args.stage!r}") from None
        bad = [s + 1 for s in stages if not 0 <= s < len(cfg.stages)]
        if bad:
            raise SystemExit(f"--stage {bad}: the config has {len(cfg.stages)} stage(s)")
    from jax_distill.train.loop import train

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax_distill").setLevel(logging.INFO)
    result = train(cfg, stages=stages, resume=args.resume, progress=not args.no_progress)
    for r in result.stages:
        if r.loss_first is None:  # --resume of a stage the checkpoint already covers: no step ran now
            loss = "already complete at the resumed checkpoint, no new steps"
        else:
            loss = f"loss {r.loss_first:.4f} -> {r.loss_last:.4f}"
        print(f"{r.name}: {r.steps} steps, {loss}"
              + (f", held-out loss {r.eval_loss:.4f}" if r.eval_loss is not None else "")
              + (f", weights in {r.export_dir}" if r.export_dir else ""))
    return 0
