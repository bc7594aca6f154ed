"""Parameters-only Orbax checkpoints of a model (what `jax-distill convert` writes).

Layout: ``DIR/config.json`` (Hugging Face style, so the architecture travels with the weights) and ``DIR/params``
(an Orbax StandardCheckpointer tree of the parameter pytree, restorable onto any mesh).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jax_distill.model.config import from_hf_config
from jax_distill.model.qwen2 import Qwen2ForCausalLM, init_model
from jax_distill.sharding import param_shardings


def save_orbax(model: Qwen2ForCausalLM, path: str | Path) -> Path:
    """Write ``model``'s parameters as an Orbax checkpoint plus its config.json."""
    import orbax.checkpoint as ocp

    out = Path(path).absolute()
    out.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / "params", params, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (out / "config.json").write_text(json.dumps(model.config.to_hf_config(), indent=2))
    return out


def load_orbax(path: str | Path, dtype: str = "float32", *, compute_dtype: str | None = None,
               mesh: Mesh | None = None, **execution: Any) -> Qwen2ForCausalLM:
    """Restore a model written by :func:`save_orbax`, sharded onto ``mesh`` when given."""
    import orbax.checkpoint as ocp

    src = Path(path).absolute()
    cfg = from_hf_config(src / "config.json", dtype=compute_dtype or dtype, param_dtype=dtype, **execution)
    abstract = nnx.eval_shape(lambda: init_model(cfg))
    graphdef, state = nnx.split(abstract)
    shapes = nnx.to_pure_dict(state)
    if mesh is not None:
        shard = param_shardings(abstract, mesh)
        target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), shapes, shard)
    else:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev), shapes)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(src / "params", target)
    return nnx.merge(graphdef, params)
