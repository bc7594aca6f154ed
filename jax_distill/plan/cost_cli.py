"""`jax-distill cost`: the price of reproducing the recipe on TPU v5e/v5p/v6e and H100/H200, on-demand and spot."""

from __future__ import annotations

import argparse

HELP = "cost to reproduce data generation + stage 1 + stage 2 + AIME evaluation on TPUs and GPUs (table, JSON, PNG)"
DESCRIPTION = """Estimate the cost of a run config's two stages plus the AIME evaluation on every accelerator in the
prices file, on-demand and spot. Training tokens per stage: the stage's dataset_tokens x epochs (else steps x batch x
seq_len). Training MFU per chip, first that applies: measured (--from-run RUN_DIR: the median MFU in its
metrics.jsonl), assumed (--mfu), our compiled step-time estimate for the chip's slice x its estimator's
calibration factor, with the calibration's error band in brackets (configs/calibration.yaml; the estimates are
cached per config in configs/step_estimates.yaml, or compiled now with --estimate: minutes), else 40%. Each row
names its source, the slice compiled and whether the stage fits there; the cheapest fitting row per pricing is
marked. With --distill-report, the stage-2 traces' generation is a line of its own: an API teacher's billed
dollars, or an open teacher's generated tokens priced as decoding on each chip.

Example: jax-distill cost --config configs/qwen2.5-math-72b_v5p-128.yaml --json"""

DEFAULT_MFU = 0.4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--from-run", help="a training run dir (metrics.jsonl with MFU, manifest.json) for efficiency")
    p.add_argument("--prices", default=None, help="prices YAML (default: configs/prices.yaml)")
    p.add_argument("--mfu", type=float, default=None, help="assumed training MFU on every chip (default: the "
                   "calibrated compiled estimate per chip, else 0.4)")
    p.add_argument("--estimate", action="store_true", help="compile the per-chip estimates now (slow: minutes per "
                   "chip for a 72B model) instead of reading the cache")
    p.add_argument("--estimates", default=None, help="cached estimates YAML (default: configs/step_estimates.yaml)")
    p.add_argument("--calibration", default=None, help="anchors + factors YAML (default: configs/calibration.yaml)")
    p.add_argument("--slices", default=None, help="with --estimate: chip=topology,... (default: --chips chips of "
                   "each kind, e.g. v5p-128, v6e-64, 8x8xh100 for 64)")
    p.add_argument("--decode-mfu", type=float, default=0.05, help="assumed MFU of decoding (memory-bound; 0.05)")
    p.add_argument("--eval-problems", type=int, default=30, help="AIME: 30 problems")
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--eval-output-tokens", type=int, default=16384, help="mean generated tokens per sample")
    p.add_argument("--chips", type=int, default=64, help="slice size for the wall-time column")
    p.add_argument("--distill-report", help="a `data distill` run's distill_report.json (local or gs://): adds "
                   "the teacher's cost as the data-generation line")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", help="write a PNG bar chart here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def cached_estimates(path, cfg) -> tuple[dict | None, str]:
    """The config's entry in the estimates cache when it was made for the same stage shape, and a note why not."""
    from pathlib import Path

    from jax_distill.plan.calibration import load_yaml, stage_shape

    if not Path(path).exists():
        return None, f"no estimates file {path}"
    entry = (load_yaml(path).get("configs") or {}).get(cfg.name)
    if not entry:
        return None, f"no cached estimates for {cfg.name} in {path} (run with --estimate)"
    batch, seq_len, _ = stage_shape(cfg)
    if (entry.get("batch_size"), entry.get("seq_len")) != (batch, seq_len):
        return None, (f"cached estimates for {cfg.name} are for batch {entry.get('batch_size')} x {entry.get('seq_len')}"
                      f", the config has {batch} x {seq_len} (run with --estimate)")
    return entry, f"cached in {path} ({entry.get('computed_with', {}).get('date', '?')})"


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from jax_distill.config import load_config
    from jax_distill.plan.cost import (
        Workload,
        data_generation,
        estimate,
        load_prices,
        measured_mfu,
        plot,
        report,
        table,
    )
    from jax_distill.train.config import RunConfig

    cfg = load_config(RunConfig, args.config, args.overrides)
    prices_path = args.prices or Path(args.config).resolve().parent / "prices.yaml"
    prices = load_prices(prices_path)
    stages = []
    for s in cfg.stages:
        if s.dataset_tokens:
            tokens = int(s.dataset_tokens * s.epochs)
        else:
            tokens = cfg.stage_steps(s) * cfg.stage_batch_size(s) * s.data.seq_len
        stages.append({"name": s.name, "tokens": tokens, "seq_len": s.data.seq_len})
    work = Workload(cfg.model, stages, args.eval_problems, args.eval_samples, args.eval_output_tokens,
                    data=data_generation(args.distill_report) if args.distill_report else None)
    from jax_distill.plan.calibration import (
        compute_estimates,
        default_slices,
        load_yaml,
        per_chip_mfu,
    )

    here = Path(args.config).resolve().parent
    calibration = load_yaml(args.calibration or here / "calibration.yaml")
    # Read (or compile) the estimates even when an MFU is given: their slices and fits stay in the table.
    if args.estimate:
        slices = dict(kv.split("=") for kv in args.slices.split(",")) if args.slices else default_slices(args.chips)
        slices = {c: t for c, t in slices.items() if c in prices["chips"]}
        estimates, note = compute_estimates(cfg, slices), "compiled now (--estimate)"
    else:
        estimates, note = cached_estimates(args.estimates or here / "step_estimates.yaml", cfg)
    per_chip = per_chip_mfu(estimates, calibration)
    source = f"assumed --mfu {args.mfu}" if args.mfu is not None else f"assumed default {DEFAULT_MFU} (no estimate)"
    train_mfu = args.mfu if args.mfu is not None else DEFAULT_MFU
    if args.mfu is not None:  # an explicit MFU wins over the estimates; keep their slice and fit
        per_chip = {c: {**e, "mfu": args.mfu, "reason": source} for c, e in per_chip.items()}
    if args.from_run:
        mfu, kind = measured_mfu(args.from_run)
        source, train_mfu = f"measured --from-run in {args.from_run} on {kind}", mfu
        per_chip = {c: {**e, "mfu": mfu, "reason": source} for c, e in per_chip.items()}
    assumptions = {"train_mfu": train_mfu, "decode_mfu": args.decode_mfu, "source": source,
                   "estimates": note, "calibration_factors": calibration.get("factors", {}),
                   "per_chip_mfu": {c: {"mfu": e.get("mfu", train_mfu), "reason": e["reason"]}
                                    for c, e in per_chip.items()}}
    lines = estimate(work, prices, train_mfu=train_mfu, decode_mfu=args.decode_mfu, chips_for_wall=args.chips,
                     per_chip=per_chip, mfu_source=source)
    rep = report(work, lines, prices, assumptions)
    if args.plot:
        plot(rep, args.plot)
        rep["plot"] = args.plot
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"{rep['model']}: {rep['train_tokens']:,} training tokens ({rep['train_flops']:.2e} FLOPs), "
              f"{rep['eval_tokens']:,} generated eval tokens; decode MFU {args.decode_mfu:.0%}; prices checked "
              f"{rep['prices_checked']}")
        print(f"training MFU: per chip below; estimates {note}; calibration factors "
              f"{assumptions['calibration_factors']}")
        if work.data:
            d = work.data
            print(f"data generation: {d['traces']:,} traces from {d['teacher']} ({d['kind']}): "
                  + (f"${d['api_usd']:,.2f} billed" if d["kind"] == "api" else
                     f"{d['generated_tokens']:,} generated tokens decoded on each chip"))
        print(table(rep))
    return 0
