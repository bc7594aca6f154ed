"""On one NVIDIA GPU: attention "cudnn" (and "chunked") against the XLA reference on packed rows, then timings.

    python benchmarks/check_gpu_attention.py [--no-timings]   # needs jax with CUDA; prints, records nothing

Checks (bf16, GQA 28/4 heads of 128, rows of several documents plus padding): forward and gradients of q, k, v
within 2e-2 of the reference relative to its largest value, on real (non-padding) tokens; a row with more documents
than ``max_segments`` gives NaN (never a silently wrong mask). Then forward+backward times of one layer's
attention at 7B shapes.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_distill.model.attention import (MaskSpec, chunked_attention, cudnn_attention,  # noqa: E402
                                         xla_attention)


def packed_row(seq_len: int, lengths: list[int]) -> np.ndarray:
    row = np.zeros(seq_len, np.int32)
    at = 0
    for i, n in enumerate(lengths, start=1):
        row[at:at + n] = i
        at += n
    return row


def inputs(b, s, h, kh, d, rows, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in ((b, s, h, d), (b, s, kh, d), (b, s, kh, d)))
    seg = jnp.asarray(np.stack(rows), jnp.int32)
    slots = jnp.arange(s, dtype=jnp.int32)
    return q, k, v, MaskSpec(seg, seg, slots, slots)


def rel_err(got, ref, real):
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    if real is not None:
        got, ref = got * real, ref * real
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def compare(name, fn, q, k, v, spec, tol):
    real = np.asarray(spec.q_segment_ids > 0)[:, :, None, None]
    ct = jnp.asarray(np.random.default_rng(1).normal(size=q.shape) * real, q.dtype)
    ref_fn = jax.jit(lambda q, k, v: xla_attention(q, k, v, spec.dense()))
    got_fn = jax.jit(fn)
    e_out = rel_err(got_fn(q, k, v), ref_fn(q, k, v), real)
    def grads(f):
        return jax.jit(jax.grad(lambda q, k, v, c: (f(q, k, v).astype(jnp.float32) * c).sum(), (0, 1, 2)))(q, k, v, ct)

    g_ref, g_got = grads(ref_fn), grads(got_fn)
    errs = [e_out] + [rel_err(a, b, None) for a, b in zip(g_got, g_ref)]
    ok = all(e <= tol for e in errs)
    print(f"{name}: relative max error out {errs[0]:.2e}, dq {errs[1]:.2e}, dk {errs[2]:.2e}, dv {errs[3]:.2e} "
          f"(tolerance {tol:g}) -> {'OK' if ok else 'FAIL'}", flush=True)
    return ok


def timed(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
    ok = True
    s = 1024
    rows = [packed_row(s, [300, 500, 200]), packed_row(s, [s]), packed_row(s, [17, 1, 640, 300])]
    q, k, v, spec = inputs(3, s, 28, 4, 128, rows, jnp.bfloat16)
    checks = (("cudnn (packed runs, max_segments=8)", lambda q, k, v: cudnn_attention(q, k, v, spec, max_segments=8)),
              ("chunked (plain JAX, block 256)", lambda q, k, v: chunked_attention(q, k, v, spec, 256)))
    for name, fn in checks:
        try:
            ok &= compare(name, fn, q, k, v, spec, 2e-2)
        except Exception:  # noqa: BLE001 - report every check
            traceback.print_exc()
            ok = False
    try:  # fp32 matmuls at full precision (the GPU default is TF32)
        q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
        with jax.default_matmul_precision("highest"):
            ok &= compare("chunked fp32", lambda q, k, v: chunked_attention(q, k, v, spec, 256), q32, k32, v32, spec,
                          1e-5)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        ok = False
    try:  # rows 0 and 2 hold 4 and 5 runs (documents + padding): over max_segments=3 they must be NaN, row 1 finite
        out = np.asarray(jax.jit(lambda q, k, v: cudnn_attention(q, k, v, spec, max_segments=3))(q, k, v), np.float32)
        poisoned = bool(np.isnan(out[[0, 2]]).all()) and bool(np.isfinite(out[1]).all())
        print(f"row over max_segments poisoned with NaN, others finite: {poisoned}", flush=True)
        ok &= poisoned
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        ok = False

    if "--no-timings" in sys.argv:
        print("ALL CHECKS OK" if ok else "SOME CHECKS FAILED", flush=True)
        return 0 if ok else 1
    # Timings: one layer's attention forward+backward at 7B shapes (28 query heads, 4 kv heads, head_dim 128).
    for s, b in ((4096, 4), (16384, 1)):
        lengths = [s // 2, s // 4, s // 8]  # a packed row: three documents and padding
        q, k, v, spec = inputs(b, s, 28, 4, 128, [packed_row(s, lengths)] * b, jnp.bfloat16)
        cases = {f"cudnn, max_segments={m}": (lambda q, k, v, m=m: cudnn_attention(q, k, v, spec, max_segments=m))
                 for m in (1, 4, 16, 64)}
        cases.update({
            "chunked block 512": lambda q, k, v: chunked_attention(q, k, v, spec, 512),
            "chunked block 1024": lambda q, k, v: chunked_attention(q, k, v, spec, 1024),
        })
        if s <= 4096:
            cases["xla (dense reference)"] = lambda q, k, v: xla_attention(q, k, v, spec.dense())
        # FLOPs of the attention that is needed (within documents; cuDNN skips the rest, chunked does not)
        flops = 4 * b * 28 * 128 * sum(n * n / 2 for n in lengths + [s - sum(lengths)]) * 3.5
        for name, fn in cases.items():
            try:
                step = jax.jit(jax.grad(lambda q, k, v, fn=fn: fn(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))
                mem = step.lower(q, k, v).compile().memory_analysis()
                t = timed(step, q, k, v)
                print(f"seq {s} x batch {b}: {name}: {t * 1e3:.2f} ms fwd+bwd, {flops / t / 1e12:.0f} TFLOP/s "
                      f"(in-document FLOPs), temp memory {mem.temp_size_in_bytes / 2**30:.2f} GiB", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"seq {s} x batch {b}: {name}: FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)
    print("ALL CHECKS OK" if ok else "SOME CHECKS FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
