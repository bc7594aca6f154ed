"""Orbax checkpoints of the whole training state, and clean exits on preemption.

A checkpoint step holds three items: ``state`` (params, optimizer state, step, RNG key data — sharded arrays,
restorable onto any mesh), ``data`` (each process's data-iterator state, one JSON file per process:
``data/process_<i>-of-<n>.json``, the layout grain and MaxText use; every host reads its own share of the files, so
every host has its own position) and ``meta`` (stage, stage step, the resolved
config, JSON). Orbax writes each step into a temporary directory and renames it only when complete, so a process
killed mid-save leaves no step that `latest_step` would return.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_distill.paths import as_path

log = logging.getLogger("jax_distill.checkpoint")


class ProcessJsonHandler(ocp.CheckpointHandler):
    """Orbax item handler: every process saves and restores its own JSON value as ``process_<i>-of-<n>.json``.
    (Orbax's JsonCheckpointHandler writes process 0's value only.) Restoring with a different process count is
    refused: the data shares per host would not match. A checkpoint from before this layout (one ``metadata`` file)
    is read by a single process."""

    def _file(self, directory) -> Any:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory, args: "ProcessJsonSave") -> None:
        self._file(directory).write_text(json.dumps(args.item))

    def restore(self, directory, args: "ProcessJsonRestore | None" = None) -> Any:
        path = self._file(directory)
        if path.exists():
            return json.loads(path.read_text())
        legacy = directory / "metadata"
        if jax.process_count() == 1 and legacy.exists():
            return json.loads(legacy.read_text())
        found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
        raise FileNotFoundError(f"{path} not found (files: {found}): was the checkpoint written by a different number"
                                " of processes?")

    def metadata(self, directory) -> None:  # noqa: ARG002
        return None

    def finalize(self, directory) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    item: Any = None


class Checkpointer:
    """Keeps the last ``keep`` checkpoints, saving every ``every`` steps (asynchronously by default)."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        self.directory = as_path(directory)  # local or gs:// (Orbax writes through epath + tensorstore)
        self.every = max(1, every)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, create=True)
        # Handlers named up front, so a fresh process can read item metadata before any save or restore.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ProcessJsonHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(self, step: int, state: Any, *, data_state: Any = None, meta: dict[str, Any] | None = None,
             force: bool = False) -> bool:
        """Save at ``step`` if it is a multiple of ``every`` (or ``force``). Returns whether a save started."""
        if not force and step % self.every:
            return False
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ProcessJsonSave(data_state or {}),
                                  meta=ocp.args.JsonSave(meta or {}))
        return bool(self._manager.save(step, args=args, force=True))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (temporary, unfinished saves are never listed)."""
        self._manager.reload()
        return self._manager.latest_step()

    def restore(self, step: int | None, abstract_state: Any, *, data: bool = True) -> tuple[Any, Any, dict[str, Any]]:
        """(state, data_state, meta) at ``step`` (None = latest). ``abstract_state``: ShapeDtypeStructs with the
        target shardings (the current mesh, which may differ from the one that saved). ``data=False`` skips this
        process's data state (None then): reading the weights of a run saved by any number of processes."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data:
            items["data"] = ProcessJsonRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], out["data"] if data else None, out["meta"]

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionGuard:
    """Turns SIGTERM (Cloud TPU preemption / maintenance, `kill`, SLURM) into a stop at a step every host agrees on.

    One process: a Python handler sets a flag that the loop polls after each step. Several processes: JAX's
    preemption sync manager (started by `jax.distributed.initialize`) owns SIGTERM; a notice on any host reaches all
    of them, and ``reached_preemption_sync_point(step)`` turns true on every host at the same step (the largest step
    any host had reached, plus one), so all hosts save that step together and exit. No Python handler is installed
    then: it would replace JAX's and leave each host stopping on its own."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._flag = threading.Event()
        self.multihost = jax.process_count() > 1
        if not self.multihost and threading.current_thread() is threading.main_thread():
            for sig in signals:
                signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self._flag.set()

    def should_stop(self, step: int) -> bool:
        """Call after every step, on every host, with the global step just completed."""
        if self.multihost:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._flag.is_set()


def source_kind(path: str | Path) -> str:
    """"hf" (config.json + safetensors), "orbax" (save_orbax layout), or "train" (a training checkpoint dir).
    ``path``: local or gs://."""
    p = as_path(path)
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return "hf"
    if (p / "config.json").is_file() and (p / "params").is_dir():
        return "orbax"
    if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()):
        return "train"
    raise FileNotFoundError(f"{path}: not a Hugging Face model dir, an Orbax params dir, or a training checkpoint dir")


def load_any(path: str | Path, dtype: str = "float32", *, compute_dtype: str | None = None,
             mesh: Any = None, **execution: Any):
    """A model from a Hugging Face dir, a `convert` Orbax dir, or a training checkpoint dir (latest step)."""
    kind = source_kind(path)
    if kind == "hf":
        from jax_distill.model.hf_io import load_pretrained

        return load_pretrained(path, dtype, compute_dtype=compute_dtype, mesh=mesh, **execution)
    if kind == "orbax":
        from jax_distill.model.orbax_io import load_orbax

        return load_orbax(path, dtype, compute_dtype=compute_dtype, mesh=mesh, **execution)
    return load_model_from_checkpoint(path, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh, **execution)


def load_model_from_checkpoint(path: str | Path, dtype: str = "float32", *, compute_dtype: str | None = None,
                               mesh: Any = None, step: int | None = None, **execution: Any):
    """The model (params only) of a training checkpoint directory, at ``step`` (default: latest)."""
    import dataclasses

    import numpy as np
    from flax import nnx

    from jax_distill.config import from_dict
    from jax_distill.model.qwen2 import init_model
    from jax_distill.sharding import MeshConfig, make_mesh, param_shardings
    from jax_distill.train.config import RunConfig

    ck = Checkpointer(path, every=1, keep=1000, async_save=False)
    step = ck.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {path}")
    meta = ck.read_meta(step)
    cfg = from_dict(RunConfig, meta["config"], f"{path}/{step}/meta").model
    mcfg = dataclasses.replace(cfg.resolve(), dtype=compute_dtype or dtype, param_dtype=dtype, **execution)
    abstract = nnx.eval_shape(lambda: init_model(mcfg))
    graphdef, state = nnx.split(abstract)
    if mesh is None:
        mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    shard = param_shardings(abstract, mesh)
    # Restore only the params subtree: the metadata gives the rest of the saved structure.
    item_meta = ck._manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(item_meta),
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    target["params"] = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, np.dtype(dtype), sharding=s),
                                    nnx.to_pure_dict(state), shard)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    target = jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None
                          else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), target)
    restored, _, _ = ck.restore(step, target, data=False)
    ck.close()
    return nnx.merge(graphdef, restored["params"])
