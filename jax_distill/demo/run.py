"""The end-to-end demo: teacher data -> tokenizer -> tiny student -> stage 1 -> stage 2, evaluated before and after.

Everything goes through the real stack: grain pipeline with packing, a mesh over the host's devices, Orbax
checkpoints, the jitted sampler and the grader.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    n_stage1: int = 2000
    n_stage2: int = 2000
    n_heldout: int = 100
    vocab_size: int = 512
    seq_len: int = 256
    batch_size: int = 16
    stage1_steps: int = 100
    stage2_steps: int = 900
    learning_rate: float = 3e-3
    hidden_size: int = 128
    num_layers: int = 4
    max_new_tokens: int = 160
    progress: bool = True


def _model_config(d: DemoConfig, vocab: int):
    from jax_distill.model.config import ModelConfig

    return ModelConfig(vocab_size=vocab, hidden_size=d.hidden_size, intermediate_size=3 * d.hidden_size,
                       num_hidden_layers=d.num_layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=d.hidden_size // 4, rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=2048)


def run_demo(d: DemoConfig) -> dict[str, Any]:
    import jax

    from jax_distill.data.config import DataConfig
    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.demo.synthetic import make_split, write_jsonl
    from jax_distill.demo.tokenizer import train_demo_tokenizer
    from jax_distill.eval.benchmarks import Problem
    from jax_distill.eval.evaluate import evaluate
    from jax_distill.data.sources import sha256_file
    from jax_distill.manifest import write_manifest
    from jax_distill.model.qwen2 import init_model
    from jax_distill.sample.sampler import generate
    from jax_distill.sharding import MeshConfig
    from jax_distill.train.config import CheckpointConfig, OptimConfig, RunConfig, StageConfig, TrainConfig
    from jax_distill.train.loop import train

    t0 = time.perf_counter()
    out = Path(d.out)
    out.mkdir(parents=True, exist_ok=True)
    # 1. The teacher writes the data.
    splits = {k: make_split(k, n, d.seed) for k, n in
              (("stage1", d.n_stage1), ("stage2", d.n_stage2), ("heldout", d.n_heldout))}
    files = {k: write_jsonl(v, out / "data" / f"{k}.jsonl") for k, v in splits.items()}
    # 2. A byte-level BPE with Qwen's chat specials.
    tok_dir = train_demo_tokenizer((r["problem"] + "\n" + r["response"] for k in ("stage1", "stage2")
                                    for r in splits[k]), out / "tokenizer", d.vocab_size)
    tok = load_tokenizer(str(tok_dir))
    vocab = -(-tok.vocab_size // 64) * 64  # pad the embedding to a multiple of 64, as Qwen does
    mcfg = _model_config(d, vocab)

    def data(kind: str) -> DataConfig:
        return DataConfig(paths=[str(files[kind])], tokenizer=str(tok_dir), seq_len=d.seq_len, require_boxed=True)

    optim = OptimConfig(learning_rate=d.learning_rate, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1,
                        weight_decay=0.01, b2=0.98)
    cfg = RunConfig(
        name="demo", seed=d.seed, output_dir=str(out / "train"), model=mcfg,
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        train=TrainConfig(batch_size=d.batch_size,
                          log_every=max(1, min(10, min(d.stage1_steps, d.stage2_steps) // 5))),
        stages=[StageConfig(name="stage1_format", data=data("stage1"), steps=d.stage1_steps, optim=optim),
                StageConfig(name="stage2_distill", data=data("stage2"), steps=d.stage2_steps, optim=optim)],
        checkpoint=CheckpointConfig(dir=str(out / "checkpoints"), every=100, keep=2),
    )
    heldout = [Problem(i, r["problem"], r["answer"], "integer") for i, r in enumerate(splits["heldout"])]
    evals: dict[str, float] = {}

    def score(name: str, model) -> None:
        def gen(prompts, **kw):
            return generate(model, prompts, stop_ids=tok.stop_ids, pad_id=tok.pad_id, **kw)

        r = evaluate(heldout, generate_fn=gen, tokenizer=tok, benchmark=f"demo-heldout ({name})",
                     max_new_tokens=d.max_new_tokens, prompt_template="{problem}", out_dir=out / "eval" / name,
                     batch_size=len(heldout), progress=d.progress, continuous=False)
        evals[name] = r["pass@1"]
        print(f"held-out accuracy {name}: {r['pass@1']:.1%}")

    score("before", init_model(mcfg.resolve(), d.seed))
    names = {0: "after_stage1", 1: "after_stage2"}
    result = train(cfg, progress=d.progress, on_stage_end=lambda i, _r, model: score(names[i], model))
    wall = time.perf_counter() - t0
    report = {
        "eval": evals,
        "stages": [{"name": r.name, "steps": r.steps, "loss_first": r.loss_first, "loss_last": r.loss_last}
                   for r in result.stages],
        "wall_seconds": wall,
        "heldout_problems": len(heldout),
        "devices": jax.device_count(),
        "model_parameters": mcfg.resolve().param_count(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_manifest(out, kind="demo", config=cfg,
                   data_files=[{"path": str(p), "sha256": sha256_file(str(p)), "records": len(splits[k])}
                               for k, p in files.items()],
                   tokenizer={"spec": str(tok_dir), "sha256": tok.sha256}, seeds={"seed": d.seed},
                   mesh={"data": jax.device_count()},
                   sampling={"temperature": 0.0, "max_new_tokens": d.max_new_tokens},
                   extra={"demo": dataclasses.asdict(d)})
    return report


def report_table(report: dict[str, Any]) -> str:
    e = report["eval"]
    rows = ["| | held-out accuracy |", "|---|---|"] + [f"| {k} | {v:.1%} |" for k, v in e.items()]
    rows += ["", "| stage | steps | loss first | loss last |", "|---|---|---|---|"]
    rows += [f"| {s['name']} | {s['steps']} | {s['loss_first']:.3f} | {s['loss_last']:.3f} |" for s in report["stages"]]
    rows += ["", f"wall time: {report['wall_seconds']:.0f} s on {report['devices']} device(s)"]
    return "\n".join(rows)
