"""`jax-distill data distill`: a problem set in, graded teacher traces out (registered under `data` by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "stage 2: teacher traces for a problem set, graded against reference answers, filtered, decontaminated"
DESCRIPTION = """Sample N traces per problem from a teacher (an OpenAI-compatible endpoint, or a local checkpoint on
our own sampler), keep the ones whose boxed answer matches the reference (all / first / up to k distinct), drop
truncated, malformed, too long/short and duplicate traces, remove problems that overlap the evaluation sets, and write
sharded trace JSONL (local or gs://, resumable) with OUT/distill_report.json. Flags override the --config file."""
EXAMPLE = ("jax-distill data distill --input AI-MO/NuminaMath-CoT --limit 2000 --model deepseek-reasoner "
           "--endpoint https://api.deepseek.com/v1 --api-key-env DEEPSEEK_API_KEY --tokenizer qwen.tiktoken "
           "--decontam aime24 aime25 amc23 math500 --eval-dir ../shared/data/eval --out gs://bucket/stage2")
_PRICES = Path(__file__).resolve().parents[2] / "configs" / "prices.yaml"

# flag -> dotted config key
_FLAGS = {"input": "input", "config_name": "config_name", "split": "split", "limit": "limit", "out": "out",
          "samples": "samples", "keep": "keep", "max_per_problem": "max_per_problem", "teacher": "teacher.kind",
          "model": "teacher.model", "endpoint": "teacher.endpoint", "api_key_env": "teacher.api_key_env",
          "checkpoint": "teacher.checkpoint", "concurrency": "teacher.concurrency", "cache": "teacher.cache",
          "max_tokens": "teacher.max_tokens", "tokenizer": "filters.tokenizer", "ngram": "decontam.ngram",
          "mesh": "teacher.mesh"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="DistillConfig YAML (e.g. configs/distill_example.yaml); flags override it")
    p.add_argument("--input", help="hub dataset name, or .jsonl/.json/.parquet file(s), glob or gs:// URL")
    p.add_argument("--config-name", help="the hub dataset's config")
    p.add_argument("--split", help="hub split (default train)")
    p.add_argument("--limit", type=int, help="first N rows only")
    p.add_argument("--out", help="output folder (local or gs://): traces-*.jsonl, distill_report.json")
    p.add_argument("--samples", type=int, help="teacher samples per problem (default 4)")
    p.add_argument("--keep", choices=["all", "first", "distinct"], help="correct traces kept per problem "
                   "(default distinct: up to --max-per-problem that are not near-duplicates)")
    p.add_argument("--max-per-problem", type=int, help="keep=distinct: at most this many per problem (default 2)")
    p.add_argument("--teacher", choices=["api", "open"], help="api: OpenAI-compatible endpoint (default); open: a "
                   "local checkpoint (--checkpoint) sampled by our engine")
    p.add_argument("--model", help="endpoint model name (default o1-mini)")
    p.add_argument("--endpoint", help="base URL, e.g. http://127.0.0.1:8000/v1 (default api.openai.com)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--checkpoint", help="open teacher: HF dir, Orbax dir or training checkpoint")
    p.add_argument("--mesh", metavar="AXIS=N,...", help="open teacher: decode mesh, as eval --mesh (e.g. "
                   "data=2,tensor=4: weights tensor-parallel, slots over data; default: one device)")
    p.add_argument("--concurrency", type=int, help="API requests in flight at most (default 16)")
    p.add_argument("--max-tokens", type=int, help="teacher completion budget per sample (default 32768)")
    p.add_argument("--cache", help="response cache JSONL (default OUT/cache/teacher.jsonl; local only)")
    p.add_argument("--tokenizer", help="the student's tokenizer: length filter and token totals")
    p.add_argument("--decontam", nargs="+", metavar="NAME[=FILE]",
                   help="evaluation sets to decontaminate against: aime24 aime25 amc23 math500, or NAME=FILE.jsonl")
    p.add_argument("--eval-dir", help="folder holding NAME.jsonl for each --decontam NAME without a file")
    p.add_argument("--ngram", type=int, help="decontamination n-gram length in words (default 13)")
    p.add_argument("--prices", default=str(_PRICES), help="prices YAML whose `teachers:` rows price the teacher "
                   "(default: this checkout's configs/prices.yaml)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides (filters.max_tokens=8192)")
    p.epilog = f"example:\n  {EXAMPLE}"


def build_config(args: argparse.Namespace):
    """The config file, then dotted overrides, then flags; validated once."""
    import yaml

    from jax_distill.config import apply_overrides, from_dict, set_dotted
    from jax_distill.distill.config import DistillConfig
    from jax_distill.errors import UserError

    data: dict = {}
    where = "data distill"
    if args.config:
        where = args.config
        data = yaml.safe_load(Path(args.config).read_text()) or {}
    apply_overrides(data, args.overrides)
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_dotted(data, key, value)
    if args.decontam:
        sets = dict(data.get("decontam", {}).get("sets") or {})
        for item in args.decontam:
            name, _, file = item.partition("=")
            sets[name] = file or None
        data.setdefault("decontam", {})["sets"] = sets
    if args.eval_dir:
        for name, file in list(data.get("decontam", {}).get("sets", {}).items()):
            if not file and (Path(args.eval_dir) / f"{name}.jsonl").is_file():
                data["decontam"]["sets"][name] = str(Path(args.eval_dir) / f"{name}.jsonl")
    cfg = from_dict(DistillConfig, data, where)
    for key, what in (("input", "--input"), ("out", "--out")):
        if not getattr(cfg, key):
            raise UserError(f"data distill: no {what} given", f"pass {what} or set `{key}:` in --config")
    if not cfg.filters.tokenizer:
        raise UserError("data distill: no student tokenizer given",
                        "pass --tokenizer (e.g. ../shared/data/tokenizer/qwen.tiktoken) or set filters.tokenizer")
    return cfg


def _cache_path(cfg) -> str:
    import hashlib

    from jax_distill.paths import is_remote

    if cfg.teacher.cache:
        return cfg.teacher.cache
    if not is_remote(cfg.out):
        return str(Path(cfg.out) / "cache" / "teacher.jsonl")
    # An object store cannot append: keep the cache on this host, one file per output.
    return str(Path.home() / ".cache" / "jax_distill" / f"distill-{hashlib.sha256(cfg.out.encode()).hexdigest()[:16]}"
               ".jsonl")


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    from jax_distill.config import to_dict
    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.distill import pipeline as pl
    from jax_distill.distill.decontam import NgramIndex
    from jax_distill.distill.teacher import APITeacher, ResponseCache, teacher_price
    from jax_distill.errors import UserError
    from jax_distill.manifest import code_version, package_versions
    from jax_distill.paths import as_path, write_atomic

    t0 = time.perf_counter()
    cfg = build_config(args)
    tc = cfg.teacher
    tok = load_tokenizer(cfg.filters.tokenizer)
    index = None
    if cfg.decontam.sets:
        from jax_distill.eval.benchmarks import load_benchmark

        sets = {name: [p.problem for p in load_benchmark(name, file)] for name, file in cfg.decontam.sets.items()}
        index = NgramIndex(sets, cfg.decontam.ngram, cfg.decontam.min_overlap)
    rows = pl.read_rows(cfg.input, split=cfg.split, name=cfg.config_name)
    problems, selection = pl.load_problems(rows, cfg, Path(cfg.input.rstrip("/")).name, index)

    if tc.kind == "api":
        key = os.environ.get(tc.api_key_env)
        if not key and not tc.endpoint:
            raise UserError(f"data distill: the API teacher needs a key in ${tc.api_key_env}",
                            "export it, or pass --endpoint for a local vLLM/SGLang server")
        teacher = APITeacher(tc.model, endpoint=tc.endpoint, api_key=key, temperature=tc.temperature,
                             top_p=tc.top_p, max_tokens=tc.max_tokens, concurrency=tc.concurrency,
                             max_retries=tc.max_retries, timeout=tc.timeout,
                             seed=tc.seed if tc.send_seed else None, max_tokens_field=tc.max_tokens_field)
        name = tc.model
        found = teacher_price(tc.model, args.prices)
        p_in = tc.price_input if tc.price_input is not None else (found[0] if found else 0.0)
        p_out = tc.price_output if tc.price_output is not None else (found[1] if found else 0.0)
        src = "config" if tc.price_input is not None or tc.price_output is not None else (found[2] if found
                                                                                          else None)
    else:
        from jax_distill.distill.open_teacher import EngineTeacher
        from jax_distill.train.checkpoint import load_any

        from flax import nnx

        from jax_distill.sharding import DECODE_RULES, decode_mesh

        mesh, rules = decode_mesh(tc.mesh, tc.rules) if tc.mesh or tc.rules else (None, None)
        with nnx.logical_axis_rules(rules or DECODE_RULES):  # each parameter placed by the decode rules
            model = load_any(tc.checkpoint, tc.dtype, mesh=mesh)
        ttok = load_tokenizer(tc.tokenizer) if tc.tokenizer else tok
        name = f"open:{Path(tc.checkpoint.rstrip('/')).name}"
        teacher = EngineTeacher(model, ttok, name=name, max_tokens=tc.max_tokens,
                                temperature=0.6 if tc.temperature is None else tc.temperature,
                                top_p=0.95 if tc.top_p is None else tc.top_p, seed=tc.seed, slots=tc.slots,
                                compact=tc.compact, mesh=mesh, rules=rules)
        p_in = p_out = 0.0
        src = "open teacher: compute, no API price"
    cache = ResponseCache(_cache_path(cfg))
    metas, stats, orphans = pl.distill(problems, cfg, teacher, tok, cache, teacher_name=name,
                                       progress=not args.json)
    rep = pl.summarize(metas, selection, problems, stats, (p_in, p_out, src), seconds=time.perf_counter() - t0)
    rep["teacher"] = {"kind": tc.kind, "model": name, "cache_id": teacher.cache_id, "cache": _cache_path(cfg),
                      "retries": getattr(teacher, "retries", 0)}
    if tc.kind == "open":
        rep["teacher"].update(engine_seconds=teacher.seconds, generated_tokens=teacher.generated_tokens,
                              param_count=int(model.config.param_count()) if hasattr(model.config, "param_count")
                              else None, mesh=dict(mesh.shape) if mesh is not None else None,
                              weight_devices=len(model.embed[...].sharding.device_set))
    rep["decontamination"].update(ngram=cfg.decontam.ngram, min_overlap=cfg.decontam.min_overlap,
                                  sets={k: {"file": v, "problems": index.sizes[k]} for k, v in
                                        cfg.decontam.sets.items()} if index else {})
    rep["orphans_removed"] = orphans
    rep["config"] = to_dict(cfg)
    rep["manifest"] = {"kind": "distill", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "code": code_version(), "packages": package_versions(),
                       "tokenizer": {"spec": tok.spec, "sha256": tok.sha256}, "input": cfg.input}
    write_atomic(as_path(cfg.out) / pl.REPORT, (json.dumps(rep, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(rep))
    else:
        s, pr = rep["samples"], rep["problems"]
        print(f"{pr['records']} rows -> {pr['selected']} problems (skipped {pr['skipped']}); {pr['done']} done, "
              f"{pr['pending']} pending; {s['total']} samples -> {s['kept']} traces (rejected {s['rejected']})")
        print(f"teacher {name}: {stats.requests} requests, {stats.cache_hits} from cache, "
              f"{rep['teacher']['retries']} retries, ${rep['this_run']['paid_usd']:.4f} this run, "
              f"${rep['teacher_cost']['usd']:.4f} for the dataset; report: {cfg.out}/{pl.REPORT}")
        for e in stats.errors[:5]:
            print(f"  error: {e}")
        if pr["pending"]:
            print(f"{pr['pending']} problem(s) pending after failed requests: rerun the same command to retry them "
                  "(answered samples come from the cache)")
    return 0
