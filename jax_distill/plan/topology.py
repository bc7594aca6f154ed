"""Cloud TPU slice names -> ahead-of-time device topologies (chip specs: jax_distill/hardware.py).

`jax.experimental.topologies.get_topology_desc` (with libtpu installed, no TPU needed) gives abstract devices of a
slice that `jax.jit(...).lower(...).compile()` accepts, so a CPU-only host can compile the real training step for a
v5p-128 and read its per-chip memory.
"""

from __future__ import annotations

import os

import re
from dataclasses import dataclass

from jax_distill.hardware import CHIPS, Chip


@dataclass(frozen=True)
class Topology:
    """A slice: its user-facing name, the chip, the number of chips and the AOT topology description arguments."""

    name: str
    chip: Chip
    chips: int
    topology_name: str
    chip_config_name: str
    wrap: tuple[bool, bool, bool]

    @property
    def hbm_bytes(self) -> int:
        return self.chip.hbm_bytes


# v5e and v6e slice shapes as Cloud TPU offers them (cloud.google.com/tpu/docs/v5e, /v6e).
_2D_GRIDS = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def _grid2(n: int) -> str:
    if n not in _2D_GRIDS:
        raise ValueError(f"{n} chips is not a v5e/v6e slice size ({sorted(_2D_GRIDS)})")
    return _2D_GRIDS[n]


_V5P_GRIDS = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


def _grid3(n: int) -> str:
    if n not in _V5P_GRIDS:
        raise ValueError(f"{n} chips is not a v5p slice size ({sorted(_V5P_GRIDS)})")
    return _V5P_GRIDS[n]


def parse_topology(name: str) -> Topology:
    """``v5p-N`` (N TensorCores = N/2 chips), ``v5e-N`` / ``v5litepod-N`` and ``v6e-N`` (N chips)."""
    m = re.fullmatch(r"(v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise ValueError(f"unknown TPU topology {name!r}: expected v5p-N, v5e-N (v5litepod-N) or v6e-N")
    kind, n = m.group(1), int(m.group(2))
    if kind == "v5p":
        if n % 2 or n < 8:
            raise ValueError(f"{name}: v5p slices count TensorCores (2 per chip), from v5p-8")
        chips = n // 2
        grid = _grid3(chips)
        wrap = (chips >= 64,) * 3
        return Topology(name, CHIPS["v5p"], chips, f"v5:{grid}", "megacore", wrap)
    kind = "v5e" if kind in ("v5e", "v5litepod") else "v6e"
    return Topology(name, CHIPS[kind], n, f"{kind}:{_grid2(n)}", "default", (False, False, False))


def topology_devices(topo: Topology):
    """Abstract devices of the slice (needs libtpu; no TPU)."""

    from jax_distill.hardware import accelerator_present

    # On a host without TPUs libtpu still asks the VM metadata for its slice and prints a screen of warnings
    # ("unexpected worker hostname ..."); compiling for a described topology needs none of it. The variables are
    # set only while libtpu loads: left in the environment they would make this process (and its children) look like
    # a TPU worker to jax.distributed (train/distributed.py).
    quiet = {} if accelerator_present() else {"TPU_ACCELERATOR_TYPE": topo.name, "TPU_WORKER_HOSTNAMES": "localhost",
                                              "TPU_WORKER_ID": "0"}
    saved = {k: os.environ.get(k) for k in quiet}
    for key, value in quiet.items():
        os.environ.setdefault(key, value)
    try:
        return _describe(topo).devices
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe(topo: Topology):
    from jax.experimental import topologies

    kwargs = dict(topology_name=topo.topology_name, platform="tpu", chip_config_name=topo.chip_config_name,
                  chips_per_host_bounds=(2, 2, 1), num_slices=1)
    if any(topo.wrap):
        kwargs["wrap"] = topo.wrap
    return topologies.get_topology_desc(**kwargs)


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True
