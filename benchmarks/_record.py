"""Shared by every benchmark: describe the machine and append a dated result section to docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
from pathlib import Path

BENCH_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming the machine: CPU model, core count, memory, and the JAX backend's devices."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    dev = ""
    try:
        import jax

        d = jax.devices()
        dev = f", JAX {jax.__version__} on {len(d)}x {d[0].device_kind}"
    except Exception:  # noqa: BLE001 - machine description must never fail a benchmark
        pass
    load = ""
    try:  # other processes on a shared machine move every figure; say how busy it was
        load = ", load average {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min)".format(*os.getloadavg())
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{dev}{load}"


def record(title: str, body_markdown: str) -> None:
    """Append ``## title (date)`` + machine line + body to docs/benchmarks.md (file-locked: benchmarks may run at once)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{body_markdown.rstrip()}\n"
    BENCH_DOC.parent.mkdir(parents=True, exist_ok=True)
    with open(BENCH_DOC, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(text)
        fcntl.flock(f, fcntl.LOCK_UN)
    print(text)
