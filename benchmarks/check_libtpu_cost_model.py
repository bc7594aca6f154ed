"""Is libtpu's cost model (``cost_analysis()["optimal_seconds"]``) usable on a TPU target? docs/cost.md, "Where
libtpu's cost model fails".

Compiles, for each slice named, one 8192^3 bf16 matmul, one elementwise op, a 3-op program (matmul, tanh, row sum)
over every chip and, with ``--step PRESET``, the 1- and 2-layer unrolled training step that plan/step_time.py
compiles (batch 8); prints libtpu's optimal_seconds beside our roofline (plan/roofline.py) of the same program.
No TPU needed. To try another libtpu without touching the venv:

    pip install --no-deps --target /tmp/libtpu52 libtpu==0.0.52
    ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=/tmp/libtpu52:$PWD python benchmarks/check_libtpu_cost_model.py \\
        v5p-8 v5e-8 v6e-8 --step qwen2.5-0.5b --seq-len 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import os


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slices", nargs="+", help="TPU slices, e.g. v5e-8 v6e-8 v5p-8")
    p.add_argument("--step", default=None, help="also the training step of this model preset (minutes per slice)")
    p.add_argument("--seq-len", type=int, default=1024)
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import libtpu
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jax_distill.model.config import ModelConfig
    from jax_distill.plan.roofline import roofline
    from jax_distill.plan.step_time import _compile_unrolled, _costs, tpu_rates
    from jax_distill.plan.topology import parse_topology, topology_devices
    from jax_distill.sharding import MeshConfig, make_mesh

    print(f"libtpu {getattr(libtpu, '__version__', '?')} from {libtpu.__file__}; jax {jax.__version__}")
    n = 8192
    for name in args.slices:
        topo = parse_topology(name)
        devices = topology_devices(topo)
        one = NamedSharding(Mesh(devices[:1], ("x",)), P())
        mesh = Mesh(devices, ("d",))
        a = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=one)
        rows = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=NamedSharding(mesh, P("d", None)))
        cols = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "d")))
        programs = {
            "matmul 8192^3 (1 chip)": (jax.jit(lambda x, y: x @ y, out_shardings=one).lower(a, a), 1),
            "x * 2 + 1 (1 chip)": (jax.jit(lambda x: x * 2 + 1, out_shardings=one).lower(a), 1),
            "tanh(x @ w).sum(-1) (all chips)": (jax.jit(lambda x, w: jnp.tanh(x @ w).sum(-1),
                                                        out_shardings=NamedSharding(mesh, P("d"))).lower(rows, cols),
                                                topo.chips),
        }
        for what, (lowered, chips) in programs.items():
            compiled = lowered.compile()
            ours = roofline(compiled.as_text(), tpu_rates(topo.chip, chips)).overlapped_s
            print(f"{name:8s} {what:34s} libtpu {_costs(compiled)['optimal_seconds']:+.5g} s   ours {ours:.5g} s")
        if args.step:
            step_mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), devices)
            cfg = ModelConfig(preset=args.step, dtype="bfloat16", remat="full", attention="splash").resolve()
            for layers in (1, 2):
                small = dataclasses.replace(cfg, num_hidden_layers=layers, scan_layers=False)
                compiled = _compile_unrolled(small, step_mesh, 8, args.seq_len)
                ours = roofline(compiled.as_text(), tpu_rates(topo.chip, topo.chips)).overlapped_s
                print(f"{name:8s} {args.step} {layers} layer(s), 8 x {args.seq_len:<6d}   libtpu "
                      f"{_costs(compiled)['optimal_seconds']:+.5g} s   ours {ours:.5g} s")


if __name__ == "__main__":
    main()
