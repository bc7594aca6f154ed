"""Training metrics: JSONL + TensorBoard writers, a console progress bar, and MFU."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from jax_distill.hardware import chip_for_device_kind
from jax_distill.paths import as_path, copy_file, is_remote, upload


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device by its ``jax.Device.device_kind`` (None when unknown, e.g. CPUs)."""
    chip = chip_for_device_kind(device_kind)
    return chip.peak_bf16_flops if chip else None


def mfu(flops_per_token: float, tokens_per_second: float, n_devices: int, peak_flops_per_device: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' combined peak."""
    return flops_per_token * tokens_per_second / (n_devices * peak_flops_per_device)


class MetricsWriter:
    """Appends one JSON line per ``write`` to OUT/metrics.jsonl and the numeric values to TensorBoard (OUT/tb).
    Only process 0 writes. OUT may be a local path or a gs:// URI.

    An object store cannot append, and tensorboardX's own GCS writer fails on close, so for a remote OUT both files
    are written in a local staging folder and :meth:`sync` copies them to OUT (whole files): at most every
    ``sync_every_s`` seconds from :meth:`write`, whenever the training loop starts a checkpoint (so the bucket holds
    every line up to the newest checkpoint), and at :meth:`close`. On resume the existing OUT/metrics.jsonl is
    downloaded first and appended to; each process writes its own TensorBoard event file."""

    def __init__(self, out_dir: str | Path, *, use_tensorboard: bool = True, sync_every_s: float = 60.0):
        self.out = as_path(out_dir)
        self.remote = is_remote(self.out)
        self.sync_every_s = sync_every_s
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        self._stage: Path | None = None
        self._last_sync = time.monotonic()
        if self._active:
            if self.remote:
                self._stage = Path(tempfile.mkdtemp(prefix="jax_distill_metrics_"))
                if (self.out / "metrics.jsonl").exists():
                    copy_file(self.out / "metrics.jsonl", self._stage / "metrics.jsonl")
            else:
                self._stage = Path(os.fspath(self.out))
            self._stage.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self._stage / "metrics.jsonl", "a")
            if use_tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self._stage / "tb"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self._active:
            return
        line = {"step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            prefix = f"{values['stage']}/" if "stage" in values else ""
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                    self._tb.add_scalar(prefix + k, v, step)
        if self.remote and time.monotonic() - self._last_sync > self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """Flush both writers and, for a remote OUT, copy metrics.jsonl and the event files there."""
        if not self._active:
            return
        if self._jsonl:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()
        if self.remote and self._stage is not None:
            upload(self._stage, self.out)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self.remote and self._stage is not None:
            upload(self._stage, self.out)
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None


class ProgressBar:
    """tqdm bar showing loss and tokens/s; silent on hosts other than 0 or when disabled."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", disable: bool = False):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                         disable=disable or jax.process_index() != 0)

    def update(self, n: int, **postfix: float) -> None:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
