"""`jax-distill data`: inspect trace data (stats: counts, skips by reason, tokens, packing efficiency)."""

from __future__ import annotations

import argparse

HELP = "inspect teacher-trace data: records, skips by reason, tokens, packing efficiency"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    s = sub.add_parser("stats", help="read, validate, tokenize and pack trace files; report what was kept/skipped")
    s.add_argument("--data", nargs="+", required=True, help="files, globs, gs:// or fsspec URLs")
    s.add_argument("--tokenizer", required=True, help=".tiktoken file, tokenizer dir or hub name")
    s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("--batch-size", type=int, default=8, help="rows per batch when packing (default 8)")
    s.add_argument("--packing", default="first_fit", choices=["first_fit", "best_fit", "none"])
    s.add_argument("--overlong", default="truncate", choices=["truncate", "drop"])
    s.add_argument("--require-boxed", action="store_true", help="skip responses without \\boxed{}")
    s.add_argument("--strict", action="store_true", help="stop at the first bad record, naming file/line/field")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from jax_distill.data.config import DataConfig
    from jax_distill.data.pipeline import build_dataset, load_documents
    from jax_distill.data.records import BadRecordError
    from jax_distill.data.tokenize import load_tokenizer

    cfg = DataConfig(paths=list(args.data), tokenizer=args.tokenizer, seq_len=args.seq_len, packing=args.packing,
                     overlong=args.overlong, require_boxed=args.require_boxed, strict=args.strict)
    tok = load_tokenizer(args.tokenizer)
    try:
        docs, report = load_documents(cfg, tok)
    except BadRecordError as err:
        raise SystemExit(f"bad record: {err}") from None
    rows = real = 0
    if docs:
        for batch in build_dataset(docs, cfg, batch_size=args.batch_size, seed=0, shuffle=False, num_epochs=1,
                                   drop_remainder=False):
            seg = batch["segment_ids"]
            rows += seg.shape[0]
            real += int((seg > 0).sum())
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
