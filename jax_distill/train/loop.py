"""The two-stage SFT run, top to bottom: mesh → model → for each stage: data, optimizer, steps, checkpoints, eval.

Steps are numbered globally across stages (stage 1 covers steps [0, n1), stage 2 [n1, n1 + n2)), so one Orbax
checkpoint directory and one `--resume` serve the whole run. A later stage starts from the previous stage's final
weights, with a fresh optimizer unless ``reset_optimizer`` is false.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_distill.config import to_dict
from jax_distill.model.qwen2 import Qwen2ForCausalLM, init_model
from jax_distill.sharding import make_mesh
from jax_distill.train.config import RunConfig, StageConfig
from jax_distill.train.optim import make_optimizer
from jax_distill.train.step import BATCH_KEYS, StepFns, build_step_fns, model_params

log = logging.getLogger("jax_distill.train")


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exit code 0 so the scheduler sees a clean stop."""

    def __init__(self, step: int):
        super().__init__(0)
        self.step = step


@dataclass
class StageResult:
    name: str
    steps: int
    loss_first: float | None = None
    loss_last: float | None = None
    eval_loss: float | None = None
    export_dir: str | None = None
    data_report: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    stages: list[StageResult]
    model: Qwen2ForCausalLM
    output_dir: Path


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when the environment describes a multi-process job (Cloud TPU pods set it up
    from the TPU metadata; GPU/SLURM jobs through JAX_COORDINATOR_ADDRESS or SLURM variables)."""
    if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0 \
            or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def stage_steps(cfg: RunConfig, stage: StageConfig) -> int:
    return stage.steps if stage.steps is not None else cfg.train.steps


def stage_offsets(cfg: RunConfig) -> list[int]:
    """Global step at which each stage starts."""
    out, total = [], 0
    for s in cfg.stages:
        out.append(total)
        total += stage_steps(cfg, s)
    return out + [total]


def initial_model(cfg: RunConfig, mesh: jax.sharding.Mesh) -> Qwen2ForCausalLM:
    """Pretrained weights (HF directory, streamed shard by shard onto the mesh) or a sharded random init."""
    mcfg = cfg.model
    if mcfg.weights:
        from jax_distill.model.hf_io import load_pretrained

        execution = {k: getattr(mcfg, k) for k in ("remat", "scan_layers", "attention", "max_segments")}
        context = {k: getattr(mcfg, k) for k in ("rope_theta", "max_position_embeddings")}
        return load_pretrained(mcfg.weights, dtype=mcfg.param_dtype, compute_dtype=mcfg.dtype, mesh=mesh,
                               context=context, **execution)
    from jax_distill.train.step import param_shardings

    resolved = mcfg.resolve()
    abstract = nnx.eval_shape(lambda: init_model(resolved, cfg.seed))
    shardings = param_shardings(abstract, mesh)
    graphdef, _ = nnx.split(abstract)
    params = jax.jit(lambda: model_params(init_model(resolved, cfg.seed)), out_shardings=shardings)()
    return nnx.merge(graphdef, params)


def check_context(cfg: RunConfig, model_cfg) -> None:
    """Refuse to train past the model's context: RoPE was never trained there, and the loss would look fine while
    the model learns position garbage. The fix is explicit: raise rope_theta and max_position_embeddings."""
    for stage in cfg.stages:
        if stage.data.seq_len > model_cfg.max_position_embeddings:
            raise ValueError(
                f"stage {stage.name}: data.seq_len {stage.data.seq_len} exceeds the model's max_position_embeddings "
                f"{model_cfg.max_position_embeddings} (rope_theta {model_cfg.rope_theta:g}). To fine-tune at a longer "
                "context, set model.max_position_embeddings and a larger model.rope_theta in the run config (for "
                "Qwen2.5-Math at 16-32k, e.g. rope_theta 300000 and max_position_embeddings 32768).")


def global_batch(local: dict[str, np.ndarray], fns: StepFns) -> dict[str, jax.Array]:
    """Assemble the global batch from each host's share (the host's rows of the [global_batch, S] arrays)."""
    return {k: jax.make_array_from_process_local_data(fns.batch_sharding, np.asarray(local[k])) for k in BATCH_KEYS}


def _abstract_state(fns: StepFns, params: Any) -> Any:
    shapes = jax.eval_shape(fns.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, fns.state_shardings)


def _flops_per_token(cfg: RunConfig, seq_len: int) -> float | None:
    try:
        from jax_distill.plan.flops import train_flops_per_token
    except ImportError:
        return None
    return float(train_flops_per_token(cfg.model.resolve(), seq_len))


def _peak_flops(cfg: RunConfig) -> float | None:
    if cfg.train.mfu_peak_flops:
        return cfg.train.mfu_peak_flops
    from jax_distill.train.metrics import peak_flops

    return peak_flops(jax.devices()[0].device_kind, cfg.model.dtype)


def evaluate_loss(fns: StepFns, params: Any, iterator: Any, max_batches: int) -> float | None:
    """Mean token cross-entropy over up to ``max_batches`` held-out batches (token-weighted)."""
    total, tokens = 0.0, 0.0
    for i, local in enumerate(iterator):
        if i >= max_batches:
            break
        out = jax.device_get(fns.eval_loss(params, global_batch(local, fns)))
        total += float(out["loss_sum"])
        tokens += float(out["tokens"])
    return total / tokens if tokens else None


def train(cfg: RunConfig, *, stages: list[int] | None = None, resume: bool = False, progress: bool = True,
          on_stage_end: Any = None) -> TrainResult:
    """Run the configured stages (all by default; indices into ``cfg.stages``). See the module docstring.

    ``on_stage_end(stage_index, StageResult, model)`` is called after each stage (the demo evaluates there)."""
    from jax_distill.data.pipeline import build_eval_iterator, build_iterator
    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.manifest import write_manifest
    from jax_distill.model.hf_io import save_pretrained
    from jax_distill.train.checkpoint import Checkpointer, PreemptionGuard
    from jax_distill.train.metrics import MetricsWriter, ProgressBar, mfu

    if not cfg.stages:
        raise ValueError("the config has no stages: add a `stages:` list (stage 1 format alignment, stage 2 traces)")
    maybe_initialize_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh)
    selected = list(range(len(cfg.stages))) if stages is None else stages
    offsets = stage_offsets(cfg)
    ckpt = Checkpointer(cfg.checkpoint.dir or str(out / "checkpoints"), every=cfg.checkpoint.every,
                        keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    guard = PreemptionGuard()
    writer = MetricsWriter(out)
    latest = ckpt.latest_step() if resume else None
    if resume and latest is None:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", ckpt.directory)
    model = initial_model(cfg, mesh)
    check_context(cfg, model.config)
    graphdef, _ = nnx.split(model)
    params = model_params(model)
    opt_state = None
    results: list[StageResult] = []
    data_files: list[dict[str, Any]] = []
    tokenizers: dict[str, Any] = {}
    try:
        for i, stage in enumerate(cfg.stages):
            n_steps = stage_steps(cfg, stage)
            start, end = offsets[i], offsets[i + 1]
            result = StageResult(stage.name, n_steps)
            if i not in selected:
                continue
            last_stage = i == len(cfg.stages) - 1
            if latest is not None and (latest > end or (latest == end and not last_stage)):
                results.append(result)
                continue  # finished before the interruption; its weights come with the later checkpoint
            batch_size = stage.batch_size or cfg.train.batch_size
            if batch_size % (cfg.train.grad_accum * jax.process_count()):
                raise ValueError(f"stage {stage.name}: batch_size {batch_size} must divide by grad_accum x processes")
            optimizer = make_optimizer(stage.optim, n_steps)
            fns = build_step_fns(model, optimizer, mesh, grad_accum=cfg.train.grad_accum)
            tok = load_tokenizer(stage.data.tokenizer)
            tokenizers[stage.data.tokenizer] = {"spec": stage.data.tokenizer, "sha256": tok.sha256}
            iterator = build_iterator(stage.data, tok, batch_size=batch_size // jax.process_count(),
                                      seed=cfg.seed + 1000 * i, process_index=jax.process_index(),
                                      process_count=jax.process_count())
            step = start
            if latest is not None and start <= latest <= end:
                state, data_state, meta = ckpt.restore(latest, _abstract_state(fns, params))
                if meta.get("stage_index") == i:
                    iterator.set_state(data_state)
                    step = latest
                else:  # the checkpoint closed the previous stage: take its weights, start this stage fresh
                    params, opt_state = state["params"], state["opt_state"]
                    state = None
                latest = None
            else:
                state = None
            if state is None:
                state = fns.init(params)
                if opt_state is not None and not stage.reset_optimizer:
                    state["opt_state"] = opt_state
            seq_len = stage.data.seq_len
            flops_tok = _flops_per_token(cfg, seq_len)
            peak = _peak_flops(cfg)
            bar = ProgressBar(total=end - start, initial=step - start, desc=stage.name, disable=not progress)
            t_last, tokens_since, steps_since = time.perf_counter(), 0, 0
            for step in range(step, end):
                local = next(iterator)
                state, metrics = fns.step(state, global_batch(local, fns))
                tokens_since += batch_size * seq_len
                steps_since += 1
                done = step + 1
                if done % cfg.train.log_every == 0 or done == end:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    dt = (now - t_last) / steps_since
                    m.update(step_time=dt, tokens_per_second=tokens_since / (now - t_last),
                             learning_rate=float(make_lr(stage, n_steps)(done - start - 1)), stage=stage.name)
                    if flops_tok and peak:
                        m["mfu"] = mfu(flops_tok, m["tokens_per_second"], jax.device_count(), peak)
                    writer.write(done, m)
                    bar.update(steps_since, loss=m["loss"], tok_s=m["tokens_per_second"])
                    result.loss_first = m["loss"] if result.loss_first is None else result.loss_first
                    result.loss_last = m["loss"]
                    t_last, tokens_since, steps_since = now, 0, 0
                meta = {"stage_index": i, "stage": stage.name, "stage_step": done - start, "config": to_dict(cfg)}
                if guard.should_stop(done):
                    ckpt.save(done, state, data_state=iterator.get_state(), meta=meta, force=True)
                    ckpt.wait()
                    log.warning("preemption signal: checkpoint at step %d written; exiting", done)
                    raise Preempted(done)
                ckpt.save(done, state, data_state=iterator.get_state(), meta=meta, force=(done == end))
                if stage.eval_data and cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != end:
                    ev = evaluate_loss(fns, state["params"], build_eval_iterator(stage.eval_data, tok,
                                       batch_size=batch_size // jax.process_count()), cfg.train.eval_batches)
                    writer.write(done, {"eval_loss": ev, "stage": stage.name})
            bar.close()
            params, opt_state = state["params"], state["opt_state"]
            if stage.eval_data:
                result.eval_loss = evaluate_loss(fns, params, build_eval_iterator(
                    stage.eval_data, tok, batch_size=batch_size // jax.process_count()), cfg.train.eval_batches)
                writer.write(end, {"eval_loss": result.eval_loss, "stage": stage.name})
            report = iterator.report() if hasattr(iterator, "report") else {}
            result.data_report = report if isinstance(report, dict) else to_dict(report)
            model = nnx.merge(graphdef, params)
            export = out / stage.name / "hf"
            save_pretrained(model, export)
            result.export_dir = str(export)
            results.append(result)
            if on_stage_end is not None:
                on_stage_end(i, result, model)
            # Every file with its hash and this host's record / kept / skipped counts (the manifest's data record).
            from jax_distill.data.sources import describe_sources

            read = result.data_report.get("read", result.data_report)
            per_file = read.get("per_file", {})
            data_files += [dict(d, stage=stage.name, **per_file.get(d["path"], {}))
                           for d in describe_sources(stage.data.paths)]
        ckpt.wait()
    finally:
        writer.close()
        ckpt.close()
    write_manifest(out, kind="train", config=cfg, data_files=data_files, tokenizer=list(tokenizers.values()),
                   seeds={"seed": cfg.seed}, mesh={"shape": dict(mesh.shape), "devices": jax.device_count()},
                   extra={"stages": [dataclasses.asdict(r) for r in results]})
    return TrainResult(results, nnx.merge(graphdef, params), out)


def make_lr(stage: StageConfig, n_steps: int):
    from jax_distill.train.optim import lr_schedule

    return lr_schedule(stage.optim, n_steps)
