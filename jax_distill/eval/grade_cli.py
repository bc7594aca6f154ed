"""`jax-distill grade`: score completions from any system against a benchmark (no model, no JAX)."""

from __future__ import annotations

import argparse

HELP = "grade a predictions file (problem_index, completion) against a benchmark: pass@1, maj@k"
DESCRIPTION = """Grade completions. Each line of PRED.jsonl is {"problem_index": i, "completion": "..."} (i: 0-based row
of the benchmark file); several lines for one problem are several samples. Strict grading (the score): the answer is
the last \\boxed{} (adjacent boxes joined); lenient grading, reported beside it, also takes an answer stated without a
box ("The final answer is 33"). AIME/AMC answers compare as integers (units, degrees, formatting normalised), MATH
answers by mathematical equivalence (math-verify). See docs/evaluation.md."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, help="aime24, aime25, amc23, math500 or a hub dataset name")
    p.add_argument("--data", help="local JSON-lines benchmark file (default: the hub)")
    p.add_argument("--predictions", required=True, help="JSON lines: problem_index, completion")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write samples.jsonl, results.json, results.md here")


def run(args: argparse.Namespace) -> int:
    import json

    from jax_distill.eval.benchmarks import load_benchmark
    from jax_distill.eval.evaluate import grade_completions, results_markdown, write_results
    from jax_distill.eval.metrics import summarize

    problems = load_benchmark(args.benchmark, args.data)
    completions = []
    with open(args.predictions, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                idx, text = row["problem_index"], row["completion"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise SystemExit(f"{args.predictions}:{n}: need an object with problem_index and completion ({err})")
            if not isinstance(idx, int) or not 0 <= idx < len(problems):
                raise SystemExit(f"{args.predictions}:{n}: problem_index {idx!r} is not a row of {args.benchmark} "
                                 f"(0..{len(problems) - 1})")
            if not isinstance(text, str):
                text = ""
            completions.append((idx, text, row.get("output_tokens", 0) or 0))
    if not completions:
        raise SystemExit(f"--predictions {args.predictions}: no predictions in the file (expected JSON lines with "
                         "problem_index and completion)")
    missing = len(problems) - len({idx for idx, _, _ in completions})
    if missing:  # scored as wrong, but said so
        import sys

        print(f"warning: {missing} of {len(problems)} {args.benchmark} problems have no prediction in "
              f"{args.predictions}; they count as wrong", file=sys.stderr)
    samples = grade_completions(problems, completions)
    k = max((sum(1 for s in samples if s["problem_index"] == i) for i in range(len(problems))), default=1)
    results = {"benchmark": args.benchmark, **summarize(samples, len(problems), k, [])}
    if args.out:
        write_results(args.out, args.benchmark, samples, results)
    if args.json:
        print(json.dumps(results))
    else:
        print(results_markdown(args.benchmark, results))
    return 0
