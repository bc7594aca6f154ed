"""`jax-distill eval`: sample a model on AIME/AMC/MATH and grade it."""

from __future__ import annotations

import argparse

HELP = "sample a model on aime24/aime25/amc23/math500 and grade it (pass@1, maj@k, token budgets)"
DESCRIPTION = """Evaluate a model: MODEL is a Hugging Face directory, an Orbax params dir from `convert`, or a training
checkpoint dir. Writes samples.jsonl, results.json, results.md and manifest.json to --out.

--mesh data=D,tensor=T samples on a decode mesh of D x T devices: weights loaded straight onto it in --dtype (each
device reads its slices), heads and MLP split over tensor, decode slots over data, KV cache rows over data and kv
heads over tensor (sharding.DECODE_RULES; --rule overrides a rule). Under several processes (jax.distributed, set up
from the environment as for `train`) every process runs this same command; they decode together and process 0
writes the files. Example:
  jax-distill eval --model ckpt/hf --benchmark aime24 --n-samples 16 --temperature 0.6 --max-new-tokens 32768 \
      --mesh data=8,tensor=8 --batch-size 64 --cache-dtype bfloat16 --out runs/eval/aime24"""


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
    p.add_argument("--scan-layers", action="store_true",
                   help="decode with the layer scan and a stacked KV cache: the weights are held once (default: "
                        "layers unrolled, the faster step, which also holds a per-layer copy of the decoder weights; "
                        "`plan --eval --decode-scan-layers` sizes this)")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--prompt-template", help="user turn; {problem} is replaced (default: Qwen2.5-Math CoT prompt)")
    p.add_argument("--dtype", default="bfloat16", help="weight and compute dtype for sampling (default bfloat16)")
    p.add_argument("--mesh", metavar="AXIS=N,...",
                   help="decode mesh, e.g. data=2,tensor=2 (axes data and tensor; an axis left out takes the "
                        "remaining devices on data, 1 on tensor). Default: one device")
    p.add_argument("--rule", action="append", default=[], metavar="LOGICAL=AXES",
                   help="override a decode sharding rule, e.g. kv_heads=null or mlp=tensor (repeatable)")
    p.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from jax_distill.train.config import DistributedConfig
    from jax_distill.train.distributed import initialize

    # Before any other JAX call: a multi-process job (explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    # JAX_PROCESS_ID, SLURM, or a Cloud TPU VM) sees all its processes' devices.
    initialize(DistributedConfig())
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import functools

    import jax
    from flax import nnx

    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.errors import UserError
    from jax_distill.eval.benchmarks import load_benchmark
    from jax_distill.eval.evaluate import DEFAULT_TEMPLATE, evaluate, results_markdown
    from jax_distill.manifest import write_manifest
    from jax_distill.sample.engine import Engine
    from jax_distill.sample.sampler import generate
    from jax_distill.sharding import DECODE_RULES, decode_mesh
    from jax_distill.train.checkpoint import load_any

    mesh = rules = None
    if args.mesh or args.rule or jax.process_count() > 1:
        try:
            mesh, rules = decode_mesh(args.mesh or "", args.rule)
        except ValueError as err:
            raise UserError(f"--mesh/--rule: {err}") from None
        if args.static_batching:
            raise UserError("--static-batching runs on one device; a decode mesh (--mesh) runs continuous batching")
        if args.batch_size % mesh.shape["data"]:
            raise UserError(f"--batch-size {args.batch_size} must divide by the mesh's data axis "
                            f"({mesh.shape['data']}): each data shard holds the same number of decode slots")
    writer = jax.process_index() == 0  # every process decodes; one writes
    problems = load_benchmark(args.benchmark, args.data)[: args.limit]
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None  # a bad --tokenizer fails before the model loads
    with nnx.logical_axis_rules(rules or DECODE_RULES):  # the loaders place each parameter by the decode rules
        model = load_any(args.model, args.dtype, mesh=mesh)
    tok = tok or load_tokenizer(args.model)
    if args.static_batching:
        gen = functools.partial(generate, model, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                                cache_dtype=args.cache_dtype)
    else:
        engine = Engine(model, slots=args.batch_size, cache_dtype=args.cache_dtype, mesh=mesh, rules=rules,
                        unroll_layers=not args.scan_layers)
        gen = functools.partial(engine.generate, stop_ids=tok.stop_ids, pad_id=tok.pad_id)
    results = evaluate(problems, generate_fn=gen, tokenizer=tok, benchmark=args.benchmark, n_samples=args.n_samples,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       top_k=args.top_k, seed=args.seed, prompt_template=args.prompt_template or DEFAULT_TEMPLATE,
                       out_dir=args.out if writer else None, batch_size=args.batch_size,
                       continuous=not args.static_batching, progress=writer)
    if not writer:
        return 0
    data_files = []
    if args.data:
        from jax_distill.data.sources import sha256_file

        data_files.append({"path": args.data, "sha256": sha256_file(args.data), "records": len(problems)})
    write_manifest(args.out, kind="eval", config=vars(args) | {"_run": None}, data_files=data_files,
                   tokenizer={"spec": tok.spec, "sha256": tok.sha256}, seeds={"seed": args.seed},
                   mesh=None if mesh is None else dict(mesh.shape) | {"rules": dict(rules)},
                   sampling=results["sampling"], budgets=[int(b) for b in results["accuracy_under_budget"]])
    print(results_markdown(args.benchmark, results))
    return 0
