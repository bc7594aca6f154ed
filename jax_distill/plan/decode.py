"""Will an eval configuration fit? The eval engine's decode chunk and prefill compiled ahead of time on a decode mesh.

The decode mesh is eval's own (`sharding.DECODE_RULES`: weights split over ``tensor``, rows and the KV cache's batch
over ``data``, kv heads over ``tensor``), not training's FSDP mesh: under FSDP every decode step would all-gather
every weight. Compiled here are the `sample.engine` pieces themselves (`abstract_engine_steps`), so the per-chip
peak covers the weights (and the per-layer copy the engine keeps when layers are unrolled), the KV cache at its
largest length bucket, and the compiler's temporaries of a decode step and of a prefill of every slot at once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

from jax_distill.model.config import ModelConfig
from jax_distill.sharding import DECODE_RULES, MeshConfig, make_mesh


def default_decode_mesh(chips: int, kv_heads: int) -> MeshConfig:
    """tensor = the largest power of two <= 8 dividing both the chips and the kv heads (tensor parallelism inside
    a host's fast links; kv heads split, not repeated), data = the rest."""
    t = 1
    while t < 8 and chips % (2 * t) == 0 and kv_heads % (2 * t) == 0:
        t *= 2
    return MeshConfig(data=chips // t, fsdp=1, tensor=t)


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {"per_chip_bytes": int(m.peak_memory_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes)}


def _shard_bytes(tree: Any) -> int:
    """Bytes per chip of a tree of sharded ShapeDtypeStructs."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def plan_eval(model_cfg: ModelConfig, devices: Sequence[Any], capacity_bytes: int, *,
              mesh_cfg: MeshConfig | None = None, slots: int = 64, cache_len: int = 33792, prompt_len: int = 512,
              chunk_steps: int = 64, unroll_layers: bool = True, mesh_builder=None) -> dict[str, Any]:
    """Compile the engine's decode chunk and prefill for ``devices`` (abstract TPU or GPU devices) on a decode mesh
    and compare each program's per-chip peak with ``capacity_bytes``. Weights and KV cache in bfloat16.

    ``cache_len``: KV cache slots per row (prompt + output budget: 33,792 = 512 + 32k + a chunk's headroom).
    ``mesh_builder(mesh_cfg, devices)``: how the backend lays out a mesh (default `sharding.make_mesh`).
    Returns a dict: the mesh, the per-chip bytes of the weights and the cache (analytic), and for "decode" and
    "prefill" the compiled peak, arguments and temporaries, and whether it fits (or the compiler's refusal)."""
    from jax_distill.sample.engine import abstract_engine_steps

    cfg = dataclasses.replace(model_cfg.resolve(), dtype="bfloat16", param_dtype="bfloat16")
    mesh_cfg = mesh_cfg or default_decode_mesh(len(devices), cfg.num_key_value_heads)
    mesh_cfg.validate_decode()
    mesh = (mesh_builder or make_mesh)(mesh_cfg, list(devices))
    rules = mesh_cfg.axis_rules(DECODE_RULES)
    tensor, data = mesh.shape["tensor"], mesh.shape["data"]  # the cache: rows over data, kv heads over tensor
    kv_split = tensor if cfg.num_key_value_heads % tensor == 0 else 1
    cache = (2 * cfg.num_hidden_layers * slots * cfg.num_key_value_heads * cache_len * cfg.head_dim * 2
             / (data * kv_split))
    out: dict[str, Any] = {"mesh": dict(mesh.shape), "slots": slots, "cache_len": cache_len,
                           "prompt_len": prompt_len, "unroll_layers": unroll_layers,
                           "cache_bytes_per_chip": int(cache), "capacity_bytes": int(capacity_bytes)}
    steps = abstract_engine_steps(cfg, mesh, rules, slots=slots, cache_len=cache_len, prompt_len=prompt_len,
                                  chunk_steps=chunk_steps, unroll_layers=unroll_layers)
    # With layers unrolled the engine holds the stacked decoder weights beside their per-layer copies; the compiled
    # pieces read only the copies (jit drops unused arguments), so the stacked ones are added to each peak.
    held = _shard_bytes(steps["decode"][1][1]["layers"]) if unroll_layers else 0
    out["weights_bytes_per_chip"] = _shard_bytes(steps["decode"][1][1]) + held
    out["held_outside_bytes"] = held
    for name, (fn, args, kwargs) in steps.items():
        t0 = time.perf_counter()
        try:
            compiled = fn.lower(*args, **kwargs).compile()
            r = _memory(compiled)
            r["per_chip_bytes"] += held
            r["fits"] = r["per_chip_bytes"] <= capacity_bytes
        except Exception as err:  # the compiler's refusal is the answer "does not fit"
            msg = str(err)
            if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
                raise
            r = {"fits": False, "error": msg.splitlines()[0][:300]}
        r["compile_seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = r
    out["fits"] = all(out[n]["fits"] for n in steps)
    return out
