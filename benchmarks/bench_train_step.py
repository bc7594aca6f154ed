"""SFT train-step tokens/s and MFU: ours vs a transformers + PyTorch AdamW step, and vs the measured matmul peak.

bench-small, fp32, batch 4 x seq 512 by default, AdamW, one device (CPU here; on a GPU run it there the same way).

    python benchmarks/bench_train_step.py [--seq-len 4096 --batch 1] [--attention chunked] [--without-attention]
        [--malloc tcmalloc]

``--without-attention`` (a diagnostic): both models with attention replaced by the identity (each head's output is
its query), so the ratio shows whether a gap lies in attention or in everything else.
"""

from __future__ import annotations

import argparse
import statistics

import common  # noqa: F401
import jax
import numpy as np
import torch
from _record import record
from common import (bench_small_pair, interleaved_times, median_ratio, page_faults, run_under_malloc, threads_note,
                    torch_matmul_peak, xla_matmul_peak)

import jax_distill.model.attention as attention_module
from jax_distill.model.qwen2 import with_config
from jax_distill.model.flops import train_flops_per_token
from jax_distill.sharding import MeshConfig, make_mesh
from jax_distill.train.config import OptimConfig
from jax_distill.train.optim import make_optimizer
from jax_distill.train.step import build_step_fns, model_params



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--attention", default="chunked", help="model.attention for ours (default: chunked)")
    ap.add_argument("--chunk-block", type=int, default=None,
                    help="block size of attention 'chunked' (default: 256 on CPU, see model.attention.block_layout)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--without-attention", action="store_true",
                    help="diagnostic: attention replaced by the identity in both (see the module docstring)")
    ap.add_argument("--malloc", choices=("glibc", "tcmalloc"), default="glibc",
                    help="heap allocator of this process, for ours and PyTorch alike (tcmalloc: re-run with it "
                         "preloaded; see docs/benchmarks.md, 'Page faults')")
    args = ap.parse_args()
    run_under_malloc(args.malloc)
    if args.chunk_block:
        attention_module.CHUNK_BLOCK = args.chunk_block
    block = f", block {attention_module.block_layout(args.seq_len)[0]}" if args.attention == "chunked" else ""
    B, S = args.batch, args.seq_len
    hf, ours = bench_small_pair()
    ours = with_config(ours, attention=args.attention)
    if args.without_attention:
        from transformers import AttentionInterface

        def identity(q, k, v, mask, *_, **__):
            return q

        for name in ("chunked_attention", "xla_attention", "dot_product_attention"):
            if hasattr(attention_module, name):  # the dispatcher looks these up at trace time
                setattr(attention_module, name, identity)
        AttentionInterface.register("identity", lambda module, q, k, v, mask, **kw: (q.transpose(1, 2), None))
        hf.set_attn_implementation("identity")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 8192, (B, S)).astype(np.int32)
    batch = {"input_ids": ids, "targets": np.roll(ids, -1, 1), "loss_mask": np.ones((B, S), np.float32),
             "segment_ids": np.ones((B, S), np.int32), "positions": np.tile(np.arange(S, dtype=np.int32), (B, 1))}
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])

    def step_fn(model):
        """One jitted SFT step of ``model`` on the batch (state carried between calls)."""
        fns = build_step_fns(model, make_optimizer(OptimConfig(learning_rate=1e-4), 1000), mesh)
        state = [fns.init(model_params(model))]

        def step():
            state[0], m = fns.step(state[0], batch)
            m["loss"].block_until_ready()

        return step

    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    hf.train()
    tids, tgt = torch.tensor(ids).long(), torch.tensor(batch["targets"]).long()

    def ref_step():
        logits = hf(tids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    # Ours as configured by default (`model.scan_layers` auto: layers unrolled on CPU), the same step with the layers
    # scanned (`model.scan_layers: true`, the TPU/GPU choice), and PyTorch, timed in interleaved rounds so that
    # load from other processes on the machine falls on all three alike; median of each, ratios as the median of
    # the per-round ratios.
    contenders = [step_fn(ours), step_fn(with_config(ours, scan_layers=True)), ref_step]
    rounds = interleaved_times(contenders, repeats=args.repeats, warmup=2)
    t_ours, t_scanned, t_ref = (statistics.median(col) for col in zip(*rounds))
    (f_ours, sys_ours), (f_ref, sys_ref) = page_faults(contenders[0]), page_faults(contenders[2])
    r_ours, r_scanned = median_ratio(rounds, 2, 0), median_ratio(rounds, 2, 1)
    tok = B * S
    flops = train_flops_per_token(ours.config, S) * tok
    peak_xla, peak_torch = xla_matmul_peak(), torch_matmul_peak()
    body = (f"bench-small SFT step (forward + backward + AdamW), fp32, batch {B} x seq {S}, one CPU device, "
            f"`model.attention: {args.attention}`{block} for ours, transformers' default attention (sdpa) for PyTorch "
            f"(median of {args.repeats} interleaved rounds). FLOPs by `model.flops.train_flops_per_token` (6N + causal attention): "
            f"{flops / 1e9:.1f} GFLOP per step.\n\n"
            f"| implementation | tokens/s | achieved GFLOP/s | share of measured fp32 matmul peak |\n|---|---|---|---|\n"
            f"| jax_distill (jit, XLA; default: layers unrolled on CPU) | {tok / t_ours:,.0f} | {flops / t_ours / 1e9:,.0f} | "
            f"{flops / t_ours / peak_xla:.0%} of XLA 2048^3 matmul ({peak_xla / 1e9:,.0f} GFLOP/s) |\n"
            f"| jax_distill, layers scanned (`model.scan_layers: true`) | {tok / t_scanned:,.0f} | "
            f"{flops / t_scanned / 1e9:,.0f} | {flops / t_scanned / peak_xla:.0%} of XLA matmul |\n"
            f"| transformers + PyTorch {torch.__version__} | {tok / t_ref:,.0f} | {flops / t_ref / 1e9:,.0f} | "
            f"{flops / t_ref / peak_torch:.0%} of torch 2048^3 matmul ({peak_torch / 1e9:,.0f} GFLOP/s) |\n\n"
            f"Ratio ours / PyTorch (median of the rounds' ratios): **{r_ours:.2f}x** (the default, unrolled on CPU), "
            f"**{r_scanned:.2f}x** (scanned). The 1.5x goal would need "
            f"{1.5 * flops / t_ref / 1e9:,.0f} GFLOP/s, {1.5 * flops / t_ref / peak_xla:.2f}x the XLA matmul peak measured "
            f"in this run. ({threads_note()})\n\n"
            f"Page faults in one step (this process's minor faults, x 4 KiB; kernel CPU time): ours "
            f"{f_ours:,} ({f_ours * 4 / 2**20:.2f} GiB, {sys_ours:.2f} s), PyTorch {f_ref:,} ({f_ref * 4 / 2**20:.2f} GiB, "
            f"{sys_ref:.2f} s).\n\n"
            f"Reproduce: `python benchmarks/bench_train_step.py --seq-len {S} --batch {B} --attention {args.attention}"
            + (f" --chunk-block {args.chunk_block}" if args.chunk_block else "")
            + (f" --malloc {args.malloc}" if args.malloc != "glibc" else "") + "`")
    if args.without_attention:
        body = body.replace("bench-small SFT step", "bench-small SFT step **with attention replaced by the identity "
                            "in both (diagnostic)**", 1).replace("interleaved rounds)", "interleaved rounds; FLOPs below still "
                            "count attention, so GFLOP/s overstate)", 1)
        body = body[:-1] + " --without-attention`"  # the Reproduce line ends the body
    record(f"SFT train step, seq {S} (issues 4, 16)" + (", without attention" if args.without_attention else "")
           + (f", {args.malloc}" if args.malloc != "glibc" else ""), body)


if __name__ == "__main__":
    main()
