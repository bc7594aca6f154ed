"""`jax-distill eval`: sample a model on AIME/AMC/MATH and grade it."""

from __future__ import annotations

import argparse

HELP = "sample a model on aime24/aime25/amc23/math500 and grade it (pass@1, maj@k, token budgets)"
DESCRIPTION = """Evaluate a model: MODEL is a Hugging Face directory, an Orbax params dir from `convert`, or a training
checkpoint dir. Writes samples.jsonl, results.json, results.md and manifest.json to --out."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF dir, Orbax params dir, or training checkpoint dir")
    p.add_argument("--tokenizer", help="tokenizer (.tiktoken, dir or hub name); default: the model dir")
    p.add_argument("--benchmark", required=True, help="aime24, aime25, amc23, math500 or a hub dataset")
    p.add_argument("--data", help="local JSON-lines benchmark file (default: the hub)")
    p.add_argument("--n-samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64,
                   help="decode slots (continuous batching) or prompts per batch (--static-batching)")
    p.add_argument("--static-batching", action="store_true",
                   help="sample in fixed batches, each run to its longest sample (default: continuous batching, a "
                        "slot takes the next sample as soon as its sample stops; the samples are the same)")
    p.add_argument("--cache-dtype", help="KV cache dtype (default: the compute dtype)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--prompt-template", help="user turn; {problem} is replaced (default: Qwen2.5-Math CoT prompt)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype for sampling")
    p.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    import functools

    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.eval.benchmarks import load_benchmark
    from jax_distill.eval.evaluate import DEFAULT_TEMPLATE, evaluate
    from jax_distill.eval.evaluate import results_markdown
    from jax_distill.manifest import write_manifest
    from jax_distill.sample.engine import Engine
    from jax_distill.train.checkpoint import load_any
    from jax_distill.sample.sampler import generate

    problems = load_benchmark(args.benchmark, args.data)[: args.limit]
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None  # a bad --tokenizer fails before the model loads
    model = load_any(args.model, "float32", compute_dtype=args.dtype)
    tok = tok or load_tokenizer(args.model)
    if args.static_batching:
        gen = functools.partial(generate, model, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                                cache_dtype=args.cache_dtype)
    else:
        engine = Engine(model, slots=args.batch_size, cache_dtype=args.cache_dtype)
        gen = functools.partial(engine.generate, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
    results = evaluate(problems, generate_fn=gen, tokenizer=tok, benchmark=args.benchmark, n_samples=args.n_samples,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       top_k=args.top_k, seed=args.seed, prompt_template=args.prompt_template or DEFAULT_TEMPLATE,
                       out_dir=args.out, batch_size=args.batch_size, continuous=not args.static_batching)
    data_files = []
    if args.data:
        from jax_distill.data.sources import sha256_file

        data_files.append({"path": args.data, "sha256": sha256_file(args.data), "records": len(problems)})
    write_manifest(args.out, kind="eval", config=vars(args) | {"_run": None}, data_files=data_files,
                   tokenizer={"spec": tok.spec, "sha256": tok.sha256}, seeds={"seed": args.seed},
                   sampling=results["sampling"], budgets=[int(b) for b in results["accuracy_under_budget"]])
    print(results_markdown(args.benchmark, results))
    return 0
