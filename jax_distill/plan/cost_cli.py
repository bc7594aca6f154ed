"""`jax-distill cost`: the price of reproducing the recipe on TPU v5e/v5p/v6e and H100/H200, on-demand and spot."""

from __future__ import annotations

import argparse

HELP = "cost to reproduce data generation + stage 1 + stage 2 + AIME evaluation on TPUs and GPUs (table, JSON, PNG)"
DESCRIPTION = """Estimate the cost of a run config's two stages plus the AIME evaluation on every accelerator in the
prices file, on-demand and spot. Training tokens per stage: the stage's dataset_tokens x epochs (else steps x batch x
seq_len). Efficiency: measured (--from-run RUN_DIR: the median MFU in its metrics.jsonl) or assumed (--mfu). With
--distill-report, the stage-2 traces' generation is a line of its own: an API teacher's billed dollars, or an open
teacher's generated tokens priced as decoding on each chip."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--from-run", help="a training run dir (metrics.jsonl with MFU, manifest.json) for efficiency")
    p.add_argument("--prices", default=None, help="prices YAML (default: configs/prices.yaml)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed training MFU (default 0.4)")
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
    assumptions = {"train_mfu": args.mfu, "decode_mfu": args.decode_mfu, "source": "assumed"}
    if args.from_run:
        mfu, kind = measured_mfu(args.from_run)
        assumptions.update(train_mfu=mfu, source=f"measured in {args.from_run} on {kind}")
        args.mfu = mfu
    lines = estimate(work, prices, train_mfu=args.mfu, decode_mfu=args.decode_mfu, chips_for_wall=args.chips)
    rep = report(work, lines, prices, assumptions)
    if args.plot:
        plot(rep, args.plot)
        rep["plot"] = args.plot
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"{rep['model']}: {rep['train_tokens']:,} training tokens ({rep['train_flops']:.2e} FLOPs), "
              f"{rep['eval_tokens']:,} generated eval tokens; MFU {assumptions['train_mfu']:.0%} "
              f"({assumptions['source']}), decode {args.decode_mfu:.0%}; prices checked {rep['prices_checked']}")
        if work.data:
            d = work.data
            print(f"data generation: {d['traces']:,} traces from {d['teacher']} ({d['kind']}): "
                  + (f"${d['api_usd']:,.2f} billed" if d["kind"] == "api" else
                     f"{d['generated_tokens']:,} generated tokens decoded on each chip"))
        print(table(rep))
    return 0
