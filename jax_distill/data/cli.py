"""`jax-distill data`: stats (counts, skips by reason, tokens, packing efficiency) and reformat (stage-1 rewriting)."""

from __future__ import annotations

import argparse
import typing

from jax_distill.data.config import DataConfig

HELP = ("trace data: stats (records, skips, tokens, packing), reformat (stage-1 rewriting of problem sets), "
        "distill (stage-2 teacher traces)")


def _choices(field: str) -> list[str]:
    return list(typing.get_args(typing.get_type_hints(DataConfig)[field]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    s = sub.add_parser("stats", help="read, validate, tokenize and pack trace files; report what was kept/skipped")
    s.add_argument("--data", nargs="+", required=True, help="files, globs, gs:// or fsspec URLs")
    s.add_argument("--tokenizer", required=True, help=".tiktoken file, tokenizer dir or hub name")
    s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("--batch-size", type=int, default=8,
                   help="rows per batch when packing (grain's packers keep this many rows open; default 8)")
    # Defaults and choices come from DataConfig, the one schema a run config's `data:` section also uses.
    d = DataConfig()
    s.add_argument("--packing", default=d.packing, choices=_choices("packing"),
                   help=f"packer (default {d.packing}: a window of --packing-window documents)")
    s.add_argument("--packing-window", type=int, default=d.packing_window,
                   help=f"documents per packing window (default {d.packing_window})")
    s.add_argument("--overlong", default=d.overlong, choices=_choices("overlong"),
                   help=f"documents longer than --seq-len (default {d.overlong})")
    s.add_argument("--require-boxed", action="store_true", help="skip responses without \\boxed{}")
    s.add_argument("--strict", action="store_true", help="stop at the first bad record, naming file/line/field")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    r = sub.add_parser("reformat", help="stage 1: filter a problem/solution set and rewrite each solution into the "
                       "standardized step-by-step format ending in \\boxed{}",
                       description="Filter problems that need a figure or ask for a proof, rewrite each solution "
                       "(OpenAI-compatible endpoint or offline rules) through an on-disk cache, keep rewrites whose "
                       "boxed answer matches the reference, and write trace JSONL locally or to gs://.")
    r.add_argument("--input", required=True, help="datasets hub name, or local .json/.jsonl/.parquet file(s)/glob")
    r.add_argument("--config-name", help="the hub dataset's config (e.g. 'algebra')")
    r.add_argument("--split", default="train", help="hub split (default train)")
    r.add_argument("--out", required=True, help="output trace file: path or gs:// URL (.jsonl)")
    r.add_argument("--rewriter", choices=["openai", "rules"], default="openai",
                   help="openai: an OpenAI-compatible chat endpoint; rules: offline, deterministic")
    r.add_argument("--endpoint", help="base URL, e.g. http://127.0.0.1:8000/v1 (default: api.openai.com)")
    r.add_argument("--model", default="gpt-4o-mini", help="endpoint model name (default gpt-4o-mini, as the paper)")
    r.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    r.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    r.add_argument("--max-retries", type=int, default=6, help="retries per request, exponential backoff (default 6)")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    r.add_argument("--cache", help="cache file (JSONL); a rerun resumes from it (default: OUT.cache.jsonl locally)")
    r.add_argument("--limit", type=int, help="first N rows only")
    r.add_argument("--price-input", type=float, default=0.15, help="USD per 1M prompt tokens (gpt-4o-mini: 0.15)")
    r.add_argument("--price-output", type=float, default=0.60, help="USD per 1M completion tokens (gpt-4o-mini: 0.60)")
    for fname in ("problem", "solution", "answer", "id"):
        r.add_argument(f"--{fname}-field", action="append", help=f"field name(s) holding the {fname} (repeatable)")
    r.add_argument("--strict", action="store_true", help="stop at the first skipped row, naming it and why")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "reformat":
        return run_reformat(args)
    return run_stats(args)


def run_reformat(args: argparse.Namespace) -> int:
    import itertools
    import json
    import os
    from pathlib import Path

    from jax_distill.data import reformat as rf

    if args.rewriter == "openai":
        key = os.environ.get(args.api_key_env)
        if not key and not args.endpoint:
            raise SystemExit(f"--rewriter openai needs an API key in ${args.api_key_env} (or --endpoint for a local "
                             "server); --rewriter rules works offline")
        rewriter = rf.EndpointRewriter(args.endpoint, args.model, api_key=key, max_retries=args.max_retries,
                                       timeout=args.timeout)
    else:
        rewriter = rf.RuleRewriter()
    fields = rf.FieldMap(**{f: tuple(getattr(args, f"{f}_field")) for f in ("problem", "solution", "answer", "id")
                            if getattr(args, f"{f}_field")})
    cache_path = args.cache or (None if "://" in args.out else f"{args.out}.cache.jsonl")
    cache = rf.RewriteCache(cache_path)
    rows = rf.load_problem_set(args.input, split=args.split, name=args.config_name)
    if args.limit:
        rows = itertools.islice(rows, args.limit)
    try:
        kept, report = rf.reformat(rows, rewriter, source=Path(args.input).name, cache=cache, fields=fields,
                                   concurrency=args.concurrency, price_in_per_m=args.price_input,
                                   price_out_per_m=args.price_output, strict=args.strict, progress=not args.json)
    except ValueError as err:
        raise SystemExit(f"reformat: {err}") from None
    rf.write_traces(kept, args.out)
    out = report.as_dict()
    out.update(out_path=args.out, cache=cache_path, rewriter=rewriter.cache_id)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{report.records} rows -> {report.kept} traces in {args.out}; skipped {dict(report.skipped)}")
        print(f"rewriter {rewriter.cache_id}: {report.api_calls} calls, {report.cache_hits} from cache, "
              f"{report.new_prompt_tokens:,} + {report.new_completion_tokens:,} new tokens, ${report.cost_usd:.4f}")
        for e in report.errors[:5]:
            print(f"  error: {e}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    import json

    from jax_distill.config import from_dict
    from jax_distill.data.sources import list_files
    from jax_distill.data.tokenize import load_tokenizer

    cfg = from_dict(DataConfig, dict(paths=list(args.data), tokenizer=args.tokenizer, seq_len=args.seq_len,
                                     packing=args.packing, packing_window=args.packing_window, overlong=args.overlong,
                                     require_boxed=args.require_boxed, strict=args.strict), "data stats")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size {args.batch_size}: must be >= 1")
    list_files(cfg.paths)  # missing files and credentials fail here, before the pipeline (and jax) is imported
    tok = load_tokenizer(args.tokenizer)
    from jax_distill.data.pipeline import build_dataset, count_packed, load_documents
    from jax_distill.data.records import BadRecordError
    try:
        docs, report = load_documents(cfg, tok)
    except BadRecordError as err:
        raise SystemExit(f"bad record: {err}") from None
    rows = real = 0
    if docs:
        rows, real = count_packed(build_dataset(docs, cfg, batch_size=args.batch_size, seed=0, shuffle=False,
                                                num_epochs=1, drop_remainder=False))
    out = report.as_dict()
    out["packing_efficiency"] = real / (rows * cfg.seq_len) if rows else 0.0
    out["padded_efficiency"] = report.tokens / (len(docs) * cfg.seq_len) if docs else 0.0
    out["packed_rows"] = rows
    out.pop("per_file")
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0
