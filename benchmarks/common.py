"""Shapes shared by the benchmarks (../shared/bench/README.md) and small timing helpers."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_distill.model.presets import PRESETS  # noqa: E402 - after the path insert

# bench-small (fp32, tied embeddings), in transformers' Qwen2Config names.
BENCH_SMALL = PRESETS["bench-small"]


def hf_bench_small(tmp: Path, seed: int = 0):
    """A random bench-small transformers model saved to ``tmp`` (the same weights load into ours)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**BENCH_SMALL)).eval()
    model.save_pretrained(tmp)
    return model


def bench_small_pair(seed: int = 0):
    """(transformers model, our model) of bench-small with the same random weights."""
    import tempfile

    from jax_distill import load_pretrained

    with tempfile.TemporaryDirectory() as d:
        hf = hf_bench_small(Path(d), seed)
        return hf, load_pretrained(d)


def best_of(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of ``repeats`` calls after ``warmup`` calls (least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved_times(fns: list[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> list[list[float]]:
    """Wall times [round][contender] of ``repeats`` rounds that call each of ``fns`` once, in turn (after ``warmup``
    rounds): on a shared machine, load that comes and goes then reaches every contender alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    rounds = []
    for _ in range(repeats):
        row = []
        for fn in fns:
            t = time.perf_counter()
            fn()
            row.append(time.perf_counter() - t)
        rounds.append(row)
    return rounds


def best_interleaved(fns: list[Callable[[], object]], repeats: int = 5, warmup: int = 1) -> list[float]:
    """Fastest wall time of each of ``fns`` over :func:`interleaved_times` rounds."""
    return [min(col) for col in zip(*interleaved_times(fns, repeats, warmup))]


def median_ratio(rounds: list[list[float]], num: int, den: int) -> float:
    """Median over rounds of time[num] / time[den] (each round's contenders ran back to back)."""
    import statistics

    return statistics.median(r[num] / r[den] for r in rounds)


def xla_matmul_peak(n: int = 2048, dtype: str = "float32") -> float:
    """Measured FLOP/s of an n^3 matmul under XLA on the default device."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    t = best_of(lambda: f(a).block_until_ready(), repeats=5)
    return 2 * n**3 / t


def torch_matmul_peak(n: int = 2048) -> float:
    import torch

    a = torch.ones(n, n)
    t = best_of(lambda: a @ a, repeats=5)
    return 2 * n**3 / t


def malloc_in_use() -> str:
    """The heap allocator of this process: "tcmalloc" or "jemalloc" when one is preloaded, else "glibc"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "glibc")


# Where Debian/Ubuntu's libtcmalloc-minimal4 (and google-perftools' libtcmalloc4) put the library.
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def run_under_malloc(name: str) -> None:
    """Re-execute this script with ``name`` ("tcmalloc") preloaded, unless it already is; "glibc": as it is.

    Our step and the reference run in one process, so both get the same allocator. It matters on CPU: XLA returns
    each step's scratch (about 2 GiB for bench-small at 4096 tokens) to glibc, which unmaps it, so every step
    faults it back in page by page; tcmalloc keeps it (docs/benchmarks.md, "Page faults")."""
    if name == "glibc" or malloc_in_use() == name:
        return
    lib = next((p for p in TCMALLOC_PATHS if Path(p).exists()), None)
    if name != "tcmalloc" or lib is None:
        raise SystemExit(f"--malloc {name}: library not found in {', '.join(TCMALLOC_PATHS)} "
                         "(Debian/Ubuntu: apt install libtcmalloc-minimal4)")
    env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")])))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def page_faults(fn: Callable[[], object]) -> tuple[int, float]:
    """(minor page faults, kernel CPU seconds) of this whole process during one call of ``fn``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def threads_note() -> str:
    import torch

    return (f"torch threads {torch.get_num_threads()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
            f"malloc {malloc_in_use()}")
