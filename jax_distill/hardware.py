"""Accelerators' published specs: memory and peak dense bf16 FLOP/s per chip, the one table that MFU (train/metrics),
AOT plans (plan/topology) and the cost model (plan/cost) read.

TPU: cloud.google.com/tpu/docs (v4, v5e, v5p, v6e); NVIDIA: the SXM datasheets, dense (no sparsity). fp32 matmuls on
TPU run at the bf16 rate with multi-pass precision; we report MFU against bf16. TPU HBM and ICI bandwidths (the TPU
roofline in plan/step_time.py) are the same pages' per-chip figures; ICI is stored one direction, half the pages'
"bidirectional ICI bandwidth per chip". GPU bandwidths live with the XLA GPU target specs (plan/gpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30


@dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # dense, per chip
    source: str
    device_kinds: tuple[str, ...] = ()  # substrings of `jax.Device.device_kind` (lower case) that mean this chip
    hbm_bytes_per_s: float | None = None  # TPU only
    ici_bytes_per_s: float | None = None  # TPU only: one direction, all of the chip's ICI ports


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, "https://cloud.google.com/tpu/docs/v4", ("tpu v4",), 1200e9),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, "https://cloud.google.com/tpu/docs/v5e", ("tpu v5 lite", "tpu v5e"),
                819e9, 200e9),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, "https://cloud.google.com/tpu/docs/v5p", ("tpu v5p", "tpu v5"),
                2765e9, 600e9),
    "v6e": Chip("TPU v6e (Trillium)", 32 * GiB, 918e12, "https://cloud.google.com/tpu/docs/v6e",
                ("tpu v6 lite", "tpu v6e"), 1638e9, 400e9),
    "a100": Chip("NVIDIA A100 SXM 80GB", 80 * 10**9, 312e12, "https://www.nvidia.com/en-us/data-center/a100/",
                 ("a100",)),
    "h100": Chip("NVIDIA H100 SXM 80GB", 80 * 10**9, 989e12, "https://www.nvidia.com/en-us/data-center/h100/",
                 ("h100",)),
    "h200": Chip("NVIDIA H200 SXM 141GB", 141 * 10**9, 989e12, "https://www.nvidia.com/en-us/data-center/h200/",
                 ("h200",)),
}


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip a ``jax.Device.device_kind`` names (None when unknown, e.g. CPUs); the longest match wins."""
    kind = device_kind.lower()
    matches = [(len(k), chip) for chip in CHIPS.values() for k in chip.device_kinds if k in kind]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def accelerator_present() -> bool:
    """Whether this host has a TPU or NVIDIA GPU device node (checked without importing jax)."""
    import glob

    return any(glob.glob(p) for p in ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*"))
