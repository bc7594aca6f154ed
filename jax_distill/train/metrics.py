"""Training metrics: JSONL + TensorBoard writers, a console progress bar, and MFU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax

from jax_distill.hardware import chip_for_device_kind

def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device by its ``jax.Device.device_kind`` (None when unknown, e.g. CPUs)."""
    chip = chip_for_device_kind(device_kind)
    return chip.peak_bf16_flops if chip else None


def mfu(flops_per_token: float, tokens_per_second: float, n_devices: int, peak_flops_per_device: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' combined peak."""
    return flops_per_token * tokens_per_second / (n_devices * peak_flops_per_device)


class MetricsWriter:
    """Appends one JSON line per ``write`` to OUT/metrics.jsonl and the numeric values to TensorBoard (OUT/tb).
    Only process 0 writes."""

    def __init__(self, out_dir: str | Path, *, use_tensorboard: bool = True):
        self.out = Path(out_dir)
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            self.out.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.out / "metrics.jsonl", "a")
            if use_tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))

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

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
