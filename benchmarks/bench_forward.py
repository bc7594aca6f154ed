"""Forward-pass tokens/s of our Flax Qwen2 vs transformers + PyTorch, bench-small (fp32, batch 4 x seq 512), CPU.

    python benchmarks/bench_forward.py
"""

from __future__ import annotations


import common  # noqa: F401 - puts the repo on sys.path
import jax
import numpy as np
import torch
from _record import record
from common import best_of, bench_small_pair, threads_note


B, S = 4, 512


def main() -> None:
    hf, ours = bench_small_pair()
    ids = np.random.default_rng(0).integers(0, 8192, (B, S)).astype(np.int32)
    fwd = jax.jit(lambda m, x: m(x))
    t_ours = best_of(lambda: fwd(ours, ids).block_until_ready())
    tids = torch.tensor(ids).long()
    with torch.no_grad():
        t_ref = best_of(lambda: hf(tids).logits)
    tok = B * S
    ratio = t_ref / t_ours
    body = (f"bench-small forward, fp32, batch {B} x seq {S} (best of 5).\n\n"
            f"| implementation | tokens/s |\n|---|---|\n"
            f"| jax_distill (jit, XLA CPU) | {tok / t_ours:,.0f} |\n"
            f"| transformers + PyTorch {torch.__version__} | {tok / t_ref:,.0f} |\n\n"
            f"Ratio ours / PyTorch: **{ratio:.2f}x**. ({threads_note()})\n\n"
            "Reproduce: `python benchmarks/bench_forward.py`")
    record("Model forward (issue 2)", body)


if __name__ == "__main__":
    main()
