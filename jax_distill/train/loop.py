"""The two-stage SFT run, top to bottom: mesh → model → for each stage: data, optimizer, steps, checkpoints, eval.

Steps are numbered globally across stages (stage 1 covers steps [0, n1), stage 2 [n1, n1 + n2)), so one Orbax
checkpoint directory and one `--resume` serve the whole run. A later stage starts from the previous stage's final
weights, with a fresh optimizer unless ``reset_optimizer`` is false.

Reading order: :func:`train` (the run), :func:`run_stage` (one stage), then the pieces they call in that order:
:func:`resume_state` (where a stage starts), :func:`train_steps` (the step loop: metrics, checkpoints, preemption)
and :func:`finish_stage` (held-out loss, export, data report).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from jax_distill.config import to_dict
from jax_distill.data.pipeline import build_eval_iterator, build_iterator
from jax_distill.data.sources import describe_sources
from jax_distill.data.tokenize import Tokenizer, load_tokenizer
from jax_distill.manifest import write_manifest
from jax_distill.model.flops import train_flops_per_token
from jax_distill.model.hf_io import load_pretrained, save_pretrained
from jax_distill.model.qwen2 import Qwen2ForCausalLM, init_model
from jax_distill.paths import as_path
from jax_distill.sharding import batch_split_error, make_mesh, param_shardings
from jax_distill.train.checkpoint import Checkpointer, PreemptionGuard
from jax_distill.train.config import RunConfig, StageConfig
from jax_distill.train.distributed import initialize as initialize_distributed
from jax_distill.train.metrics import MetricsWriter, ProgressBar, mfu, peak_flops
from jax_distill.train.optim import lr_schedule, make_optimizer
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
    output_dir: epath.Path


@dataclass
class Run:
    """What every stage of one run shares. ``resume_step`` is the checkpoint to continue from; the stage that
    contains it consumes it (sets it to None)."""

    cfg: RunConfig
    out: epath.Path  # local or gs://
    mesh: jax.sharding.Mesh
    ckpt: Checkpointer
    guard: PreemptionGuard
    writer: MetricsWriter
    progress: bool
    resume_step: int | None
    data_files: list[dict[str, Any]] = field(default_factory=list)
    tokenizers: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Weights:
    """The weights (and optimizer state) that one stage hands to the next."""

    params: Any
    opt_state: Any = None


def train(cfg: RunConfig, *, stages: list[int] | None = None, resume: bool = False, progress: bool = True,
          on_stage_end: Callable[[int, StageResult, Qwen2ForCausalLM], None] | None = None) -> TrainResult:
    """Run the configured stages (all by default; indices into ``cfg.stages``). See the module docstring.

    ``on_stage_end(stage_index, StageResult, model)`` is called after each stage (the demo evaluates there)."""
    if not cfg.stages:
        raise ValueError("the config has no stages: add a `stages:` list (stage 1 format alignment, stage 2 traces)")
    initialize_distributed(cfg.distributed)
    out = as_path(cfg.output_dir)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh)
    ckpt = Checkpointer(cfg.checkpoint.dir or str(out / "checkpoints"), every=cfg.checkpoint.every,
                        keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    run = Run(cfg, out, mesh, ckpt, PreemptionGuard(), MetricsWriter(out), progress,
              resume_step=ckpt.latest_step() if resume else None)
    if resume and run.resume_step is None:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", ckpt.directory)
    selected = range(len(cfg.stages)) if stages is None else stages
    results: list[StageResult] = []
    # The run's logical-axis rules govern every sharding decided below (params, optimizer state, batches).
    with nnx.logical_axis_rules(cfg.mesh.axis_rules()):
        try:
            model = initial_model(cfg, mesh)
            check_context(cfg, model.config)
            graphdef, _ = nnx.split(model)
            weights = Weights(model_params(model))
            for i, stage in enumerate(cfg.stages):
                if i not in selected:
                    continue
                if finished_before_resume(run, i):
                    results.append(StageResult(stage.name, cfg.stage_steps(stage)))
                    continue  # its weights come with the later checkpoint
                result, weights = run_stage(run, i, stage, graphdef, weights)
                results.append(result)
                if on_stage_end is not None:
                    on_stage_end(i, result, nnx.merge(graphdef, weights.params))
            ckpt.wait()
        finally:
            run.writer.close()
            ckpt.close()
    write_manifest(out, kind="train", config=cfg, data_files=run.data_files, tokenizer=list(run.tokenizers.values()),
                   seeds={"seed": cfg.seed}, mesh={"shape": dict(mesh.shape), "devices": jax.device_count()},
                   extra={"stages": [dataclasses.asdict(r) for r in results]})
    return TrainResult(results, nnx.merge(graphdef, weights.params), out)


def run_stage(run: Run, i: int, stage: StageConfig, graphdef: Any, weights: Weights) -> tuple[StageResult, Weights]:
    """Train stage ``i`` from ``weights`` (or from the checkpoint being resumed), export it, and return its result
    and the weights for the next stage."""
    cfg = run.cfg
    n_steps = cfg.stage_steps(stage)
    end = cfg.stage_offsets()[i + 1]
    batch_size = cfg.stage_batch_size(stage)
    if batch_size % (cfg.train.grad_accum * jax.process_count()):
        raise ValueError(f"stage {stage.name}: batch_size {batch_size} must divide by grad_accum x processes")
    why = batch_split_error(batch_size, cfg.train.grad_accum, run.mesh.shape["data"] * run.mesh.shape["fsdp"])
    if why:
        raise ValueError(f"stage {stage.name}: {why} (mesh {dict(run.mesh.shape)}; or put chips on mesh.tensor)")
    fns = build_step_fns(nnx.merge(graphdef, weights.params), make_optimizer(stage.optim, n_steps), run.mesh,
                         grad_accum=cfg.train.grad_accum)
    tok = load_tokenizer(stage.data.tokenizer)
    run.tokenizers[stage.data.tokenizer] = {"spec": stage.data.tokenizer, "sha256": tok.sha256}
    iterator = build_iterator(stage.data, tok, batch_size=batch_size // jax.process_count(),
                              seed=cfg.seed + 1000 * i, process_index=jax.process_index(),
                              process_count=jax.process_count())
    state, step = resume_state(run, i, stage, fns, iterator, weights)
    result = StageResult(stage.name, n_steps)
    state = train_steps(run, i, stage, fns, state, iterator, tok, step, result)
    weights = Weights(state["params"], state["opt_state"])
    finish_stage(run, stage, fns, weights.params, iterator, tok, result, nnx.merge(graphdef, weights.params), end)
    return result, weights


def finished_before_resume(run: Run, i: int) -> bool:
    """Whether the checkpoint being resumed lies past stage ``i`` (so the stage is not run again). A checkpoint at
    the very end of a stage that is not the last one belongs to the next stage: it starts from those weights."""
    if run.resume_step is None:
        return False
    end = run.cfg.stage_offsets()[i + 1]
    last = i == len(run.cfg.stages) - 1
    return run.resume_step > end or (run.resume_step == end and not last)


def resume_state(run: Run, i: int, stage: StageConfig, fns: StepFns, iterator: Any,
                 weights: Weights) -> tuple[dict[str, Any], int]:
    """(train state, first global step) of stage ``i``: restored mid-stage from the checkpoint being resumed (data
    position included), or fresh from ``weights`` (the checkpoint's weights when it closed the previous stage)."""
    start, end = run.cfg.stage_offsets()[i:i + 2]
    step = run.resume_step
    if step is not None and start <= step <= end:
        run.resume_step = None
        state, data_state, meta = run.ckpt.restore(step, _abstract_state(fns, weights.params))
        if meta.get("stage_index") == i:
            iterator.set_state(data_state)
            return state, step
        weights = Weights(state["params"], state["opt_state"])
    state = fns.init(weights.params)
    if weights.opt_state is not None and not stage.reset_optimizer:
        state["opt_state"] = weights.opt_state
    return state, start


def train_steps(run: Run, i: int, stage: StageConfig, fns: StepFns, state: dict[str, Any], iterator: Any,
                tok: Tokenizer, step: int, result: StageResult) -> dict[str, Any]:
    """Steps ``step`` .. the stage's end: one jitted step each, metrics every ``log_every``, a checkpoint every
    ``checkpoint.every`` and at the end, held-out loss every ``eval_every``; on a preemption signal, a checkpoint and
    :class:`Preempted`. Fills ``result``'s first and last loss; returns the final state."""
    cfg = run.cfg
    start, end = cfg.stage_offsets()[i:i + 2]
    meter = Throughput(cfg, stage)
    lr = lr_schedule(stage.optim, cfg.stage_steps(stage))
    bar = ProgressBar(total=end - start, initial=step - start, desc=stage.name, disable=not run.progress)
    for step in range(step, end):
        state, metrics = fns.step(state, global_batch(next(iterator), fns))
        meter.count()
        done = step + 1
        if done % cfg.train.log_every == 0 or done == end:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            m.update(meter.read(), learning_rate=float(lr(done - start - 1)), stage=stage.name)
            run.writer.write(done, m)
            bar.update(meter.steps_read, loss=m["loss"], tok_s=m["tokens_per_second"])
            result.loss_first = m["loss"] if result.loss_first is None else result.loss_first
            result.loss_last = m["loss"]
        meta = {"stage_index": i, "stage": stage.name, "stage_step": done - start, "config": to_dict(cfg)}
        if run.guard.should_stop(done):
            run.ckpt.save(done, state, data_state=iterator.get_state(), meta=meta, force=True)
            run.ckpt.wait()
            run.writer.sync()
            log.warning("preemption signal: checkpoint at step %d written; exiting", done)
            raise Preempted(done)
        if run.ckpt.save(done, state, data_state=iterator.get_state(), meta=meta, force=(done == end)):
            run.writer.sync()  # the metrics up to this checkpoint reach OUT (a no-op copy for a local OUT)
        if stage.eval_data and cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != end:
            run.writer.write(done, {"eval_loss": heldout_loss(run, stage, fns, state["params"], tok),
                                    "stage": stage.name})
    bar.close()
    return state


def finish_stage(run: Run, stage: StageConfig, fns: StepFns, params: Any, iterator: Any, tok: Tokenizer,
                 result: StageResult, model: Qwen2ForCausalLM, end: int) -> None:
    """Held-out loss, the data report, the Hugging Face export (OUT/<stage>/hf, in ``checkpoint.export_dtype``) and
    the manifest's data record."""
    if stage.eval_data:
        result.eval_loss = heldout_loss(run, stage, fns, params, tok)
        run.writer.write(end, {"eval_loss": result.eval_loss, "stage": stage.name})
    report = iterator.report() if hasattr(iterator, "report") else {}
    result.data_report = report if isinstance(report, dict) else to_dict(report)
    export = run.out / stage.name / "hf"
    save_pretrained(model, export, dtype=run.cfg.checkpoint.export_dtype, tokenizer=tok)  # process 0 writes
    result.export_dir = str(export)
    # Every file with its hash and this host's record / kept / skipped counts.
    per_file = result.data_report.get("read", result.data_report).get("per_file", {})
    run.data_files += [dict(d, stage=stage.name, **per_file.get(d["path"], {}))
                       for d in describe_sources(stage.data.paths)]


class Throughput:
    """Step time, tokens/s and MFU over the steps since the last read."""

    def __init__(self, cfg: RunConfig, stage: StageConfig):
        self.tokens_per_step = cfg.stage_batch_size(stage) * stage.data.seq_len
        self.flops_per_token = float(train_flops_per_token(cfg.model.resolve(), stage.data.seq_len))
        self.peak = cfg.train.mfu_peak_flops or peak_flops(jax.devices()[0].device_kind)
        self.t0, self.steps, self.steps_read = time.perf_counter(), 0, 0

    def count(self) -> None:
        self.steps += 1

    def read(self) -> dict[str, float]:
        now = time.perf_counter()
        tok_s = self.tokens_per_step * self.steps / (now - self.t0)
        out = {"step_time": (now - self.t0) / self.steps, "tokens_per_second": tok_s}
        if self.peak:
            out["mfu"] = mfu(self.flops_per_token, tok_s, jax.device_count(), self.peak)
        self.t0, self.steps_read, self.steps = now, self.steps, 0
        return out


def heldout_loss(run: Run, stage: StageConfig, fns: StepFns, params: Any, tok: Tokenizer) -> float | None:
    """Mean token cross-entropy over up to ``train.eval_batches`` global batches of ``stage.eval_data``
    (token-weighted). Each host reads only its share of the held-out files; the hosts agree on the number of batches
    (a host whose share ends first feeds empty rows, which carry no tokens), and the sums are global arrays."""
    pi, pc = jax.process_index(), jax.process_count()
    batches = list(itertools.islice(build_eval_iterator(stage.eval_data, tok, batch_size=run.cfg.stage_batch_size(
        stage) // pc, process_index=pi, process_count=pc), run.cfg.train.eval_batches))
    n = len(batches)
    if pc > 1:
        n = int(np.max(multihost_utils.process_allgather(np.int32(n))))
    empty = {k: np.zeros_like(v) for k, v in batches[0].items()}
    total, tokens = 0.0, 0.0
    for i in range(n):
        out = jax.device_get(fns.eval_loss(params, global_batch(batches[i] if i < len(batches) else empty, fns)))
        total += float(out["loss_sum"])
        tokens += float(out["tokens"])
    return total / tokens if tokens else None


def initial_model(cfg: RunConfig, mesh: jax.sharding.Mesh) -> Qwen2ForCausalLM:
    """Pretrained weights (HF directory, streamed shard by shard onto the mesh) or a sharded random init."""
    mcfg = cfg.model
    if mcfg.weights:
        execution = {k: getattr(mcfg, k) for k in ("remat", "scan_layers", "attention", "max_segments")}
        context = {k: getattr(mcfg, k) for k in ("rope_theta", "max_position_embeddings")}
        return load_pretrained(mcfg.weights, dtype=mcfg.param_dtype, compute_dtype=mcfg.dtype, mesh=mesh,
                               context=context, **execution)
    resolved = mcfg.resolve()
    abstract = nnx.eval_shape(lambda: init_model(resolved, cfg.seed))
    graphdef, _ = nnx.split(abstract)
    params = jax.jit(lambda: model_params(init_model(resolved, cfg.seed)),
                     out_shardings=param_shardings(abstract, mesh))()
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
