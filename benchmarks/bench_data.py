"""Input pipeline throughput and packing efficiency on traces of realistic length (2k-16k tokens).

Traces are built from the real MATH-500 solutions in ../shared/data/eval (concatenated to a log-uniform target length
between 2k and 16k tokens) and tokenized with the real Qwen2.5 vocabulary. Measured: read + validate + chat template +
tokenize (tokens/s), then packing + batching at seq 16384 with 0, 1, 2 and 4 grain worker processes, and packing
efficiency (first-fit, best-fit) against padding each trace to the sequence length. The reference is what one host
of the shipped 72B run consumes: the plan's tokens per step / hosts / step time at 40% MFU.

    python benchmarks/bench_data.py [--traces 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import common  # noqa: F401
from _record import record

from jax_distill.data.config import DataConfig
from jax_distill.data.pipeline import build_dataset, count_packed, load_documents
from jax_distill.data.tokenize import load_tokenizer
from jax_distill.model.config import ModelConfig
from jax_distill.model.flops import train_flops_per_token
from jax_distill.plan.topology import parse_topology

SHARED = Path(os.environ.get("JAX_DISTILL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SEQ = 16384
BATCH = 8


def make_traces(path: Path, n: int, tok, seed: int = 0) -> None:
    rows = [json.loads(x) for x in (SHARED / "eval" / "math500.jsonl").read_text().splitlines()]
    sols = [r["solution"] for r in rows]
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            target = int(math.exp(rng.uniform(math.log(2000), math.log(15500))))
            parts, tokens = [], 0
            while tokens < target:
                s = rng.choice(sols)
                parts.append(s)
                tokens += len(tok.encode(s)) + 2
            problem = rng.choice(rows)["problem"]
            f.write(json.dumps({"id": f"t{i}", "problem": problem, "response": "\n\n".join(parts)}) + "\n")


def pack_rate(docs, cfg: DataConfig, workers: int) -> tuple[float, float, int]:
    """(non-pad tokens/s, packing efficiency, rows) over one shuffled epoch."""
    cfg = dataclasses.replace(cfg, worker_count=workers)
    ds = build_dataset(docs, cfg, batch_size=BATCH, seed=0, shuffle=True, num_epochs=1)
    t0 = time.perf_counter()
    rows, real = count_packed(ds)
    dt = time.perf_counter() - t0
    return real / dt, real / (rows * SEQ), rows


def steady_state(docs, packing: str, bins: int, batches: int = 150) -> float:
    """Packing efficiency of the repeating stream (no end-of-epoch tail), as a long run sees it.

    ``bins``: open rows for grain's packers, the window (documents) for best_fit_decreasing."""
    c = DataConfig(paths=["-"], tokenizer="", seq_len=SEQ, packing=packing, packing_bins=bins, packing_window=bins)
    ds = build_dataset(docs, c, batch_size=BATCH, seed=0, shuffle=True, num_epochs=None)
    rows, real = count_packed(itertools.islice(ds, batches))
    return real / (rows * SEQ)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=300)
    args = ap.parse_args()
    tok = load_tokenizer(str(SHARED / "tokenizer" / "qwen.tiktoken"))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "traces.jsonl"
        make_traces(path, args.traces, tok)
        cfg = DataConfig(paths=[str(path)], tokenizer="", seq_len=SEQ)
        t0 = time.perf_counter()
        docs, rep = load_documents(cfg, tok)
        t_load = time.perf_counter() - t0
    lens = sorted(len(x["input_ids"]) for x in docs)
    tokens = sum(lens)
    padded_eff = tokens / (len(docs) * SEQ)
    results = {}
    for packing in ("best_fit_decreasing", "first_fit", "best_fit"):
        c = DataConfig(paths=cfg.paths, tokenizer="", seq_len=SEQ, packing=packing)
        results[packing] = pack_rate(docs, c, 0)
    workers = {}
    for w in (1, 2, 4):
        workers[w] = pack_rate(docs, cfg, w)

    # What one host of the shipped 72B run eats: v5p-128 (64 chips, 4 per host), batch 64 x 16k, 40% MFU.
    topo = parse_topology("v5p-128")
    m72 = ModelConfig(preset="qwen2.5-math-72b")
    step_tokens = 64 * SEQ
    step_s = train_flops_per_token(m72, SEQ) * step_tokens / (topo.chips * topo.chip.peak_bf16_flops * 0.4)
    hosts = topo.chips // 4
    need = step_tokens / hosts / step_s

    body = [f"{len(docs)} traces built from MATH-500 solutions, {lens[0]:,}-{lens[-1]:,} tokens (median "
            f"{lens[len(lens) // 2]:,}), {tokens:,} tokens in all; real Qwen2.5 vocabulary; seq {SEQ}, batch {BATCH}.",
            "",
            "| stage | tokens/s | vs one 72B host's need |", "|---|---|---|",
            f"| read + validate + template + tokenize (1 process) | {tokens / t_load:,.0f} | {tokens / t_load / need:,.0f}x |"]
    body += [f"| pack ({p}) + batch, in process | {r[0]:,.0f} | {r[0] / need:,.0f}x |" for p, r in results.items()]
    body += [f"| pack (best_fit_decreasing) + batch, {w} grain worker(s) | {r[0]:,.0f} | {r[0] / need:,.0f}x |"
             for w, r in workers.items()]
    body += ["", "| layout | efficiency (non-pad share of tokens) | rows |", "|---|---|---|",
             f"| one trace per row, padded to {SEQ} | {padded_eff:.1%} | {len(docs)} |"]
    body += [f"| packed, {p} ({'512-document window' if p == 'best_fit_decreasing' else f'{BATCH} open bins'}), "
             f"one epoch | {r[1]:.1%} | {r[2]} |" for p, r in results.items()]
    body += ["", "Steady state (repeating stream, 1,200 rows, no epoch tail): grain's packers by open bins "
             "(`data.packing_bins`), ours by window (`data.packing_window`, documents):", "",
             "| open bins / window | first_fit | best_fit | best_fit_decreasing |", "|---|---|---|---|"]
    body += [f"| {n} | {steady_state(docs, 'first_fit', n):.1%} | {steady_state(docs, 'best_fit', n):.1%} | "
             f"{steady_state(docs, 'best_fit_decreasing', n):.1%} |" for n in (8, 64, 256, 512)]
    body += ["", f"One host's need: the 72B config on v5p-128 moves {step_tokens:,} tokens per step; at 40% MFU a step "
             f"takes {step_s:.1f} s (6N + attention FLOPs over {topo.chips} x {topo.chip.peak_bf16_flops / 1e12:.0f} "
             f"TFLOP/s), so each of its {hosts} hosts consumes **{need:,.0f} tokens/s**.",
             "Packing goal >= 97% at seq 16k: see the best_fit_decreasing column (the default packer; the 16k configs "
             "use a 512-document window). grain's packers emit every open bin when a document fits none of them; with "
             "documents of 2k-16k tokens in 16k rows that happens often, so they stay near 95% even with 256 bins.",
             "Workers: this machine has 2 cores, so more than 2 workers only add contention; packing is cheap next "
             "to tokenization, which happens once, before training.",
             "", "Reproduce: `python benchmarks/bench_data.py`"]
    record("Input pipeline: throughput and packing (issue 3)", "\n".join(body))


if __name__ == "__main__":
    main()
