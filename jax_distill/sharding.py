"""Device meshes and the one table that maps the model's logical axis names onto mesh axes.

Mesh axes: ``data`` (pure data parallel: replicas), ``fsdp`` (data parallel with parameters and optimizer state
sharded, ZeRO-3 style), ``tensor`` (Megatron-style: heads, MLP hidden and vocabulary split).
Every parameter carries logical axis names (see model/qwen2.py); ``logical_to_spec`` turns them into a
``PartitionSpec`` through ``LOGICAL_RULES``, the only place that decides where things live.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),  # activations: the batch is split over every data-parallel axis
    "seq": None,
    "embed": "fsdp",  # parameters: the model dimension is where FSDP shards
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,  # the scan axis: never sharded
    "norm": None,
    "act_embed": None,  # activations' model dimension stays whole
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "cache_seq": None,
}


@dataclass
class MeshConfig:
    """Sizes of the (data, fsdp, tensor) mesh axes; one of them may be -1 = all remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"mesh {sizes}: at most one axis may be -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ValueError(f"mesh {sizes}: {n_devices} devices do not divide by {known}")
            sizes[sizes.index(-1)] = n_devices // known
        if math.prod(sizes) != n_devices:
            raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {math.prod(sizes)} "
                             f"devices, have {n_devices}")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all). Uses the physical topology when it can."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.shape(len(devices))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - fake or odd topologies: fall back to the plain device order
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None, rules: dict[str, Any] | None = None) -> P:
    """PartitionSpec for a tuple of logical axis names; a mesh axis is used at most once per array."""
    rules = LOGICAL_RULES if rules is None else rules
    if axes is None:
        return P()
    used: set[str] = set()
    out = []
    for name in axes:
        target = rules.get(name) if name is not None else None
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else (targets or None))
    return P(*out)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drop mesh axes from ``spec`` where the dimension does not divide by their size (e.g. 2 KV heads on tensor=4)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        keep = []
        size = 1
        for n in names:
            if dim % (size * mesh.shape[n]) == 0:
                keep.append(n)
                size *= mesh.shape[n]
        out.append(keep[0] if len(keep) == 1 else (tuple(keep) or None))
    return P(*out)


def named_sharding(mesh: Mesh, axes: Sequence[str | None] | None, shape: Sequence[int] | None = None) -> NamedSharding:
    spec = logical_to_spec(axes)
    if shape is not None:
        spec = fit_spec(spec, shape, mesh)
    return NamedSharding(mesh, spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Activation sharding constraint by logical names; a no-op outside a mesh context."""
    mesh = _current_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, fit_spec(logical_to_spec(axes), x.shape, mesh)))


def _current_mesh() -> Mesh | None:
    if _TRACING_MESH.get() is not None:
        return _TRACING_MESH.get()
    try:
        from jax.sharding import get_abstract_mesh

        am = get_abstract_mesh()
        if am is not None and not am.empty:
            return am  # type: ignore[return-value]
    except ImportError:
        pass
    from jax._src import mesh as mesh_lib  # legacy `with mesh:` context

    m = mesh_lib.thread_resources.env.physical_mesh
    return None if m.empty else m


# The mesh that `constrain` pins activations to while a step is being traced (set by `with_mesh`). jit's in/out
# shardings alone do not reach inside a step; without constraints the compiler may replicate e.g. the logits.
_TRACING_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jax_distill_mesh", default=None)


def with_mesh(fn, mesh: Mesh):
    """``fn`` whose tracing sees ``mesh`` as the target of :func:`constrain`."""

    def wrapped(*args, **kwargs):
        token = _TRACING_MESH.set(mesh)
        try:
            return fn(*args, **kwargs)
        finally:
            _TRACING_MESH.reset(token)

    return wrapped


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input: batch split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
