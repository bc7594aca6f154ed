"""Device meshes and the one table that maps the model's logical axis names onto mesh axes.

Mesh axes: ``data`` (pure data parallel: replicas), ``fsdp`` (data parallel with parameters and optimizer state
sharded, ZeRO-3 style), ``tensor`` (Megatron-style: heads, MLP hidden and vocabulary split).

Every parameter carries logical axis names as flax's ``out_sharding`` metadata (see model/qwen2.py). The rules that
turn them into mesh axes are :data:`DEFAULT_RULES`, overridable per run (``mesh.rules`` in a run config), and applied
through the libraries' own machinery: ``nnx.logical_axis_rules`` + ``nnx.get_partition_spec`` for parameters, and
``jax.sharding.use_abstract_mesh`` while a step is traced, so that :func:`constrain` pins activations to the mesh.
A dimension that does not divide by its mesh axes is replicated along them, with a :class:`ShardingFallbackWarning`
naming the array (never silently).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core.spmd import get_logical_axis_rules
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

MeshTarget = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshTarget], ...]  # flax's form: (logical name, mesh axis / axes / None) pairs

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated). The only default placement table.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),  # activations: the batch is split over every data-parallel axis
    ("seq", None),
    ("embed", "fsdp"),  # parameters: the model dimension is where FSDP shards
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),  # the scan axis: never sharded
    ("norm", None),
    ("act_embed", None),  # activations' model dimension stays whole
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_seq", None),
)
LOGICAL_AXES = tuple(name for name, _ in DEFAULT_RULES)

# Sampling (eval) runs on a decode mesh of its own: weights are read in full on every decode step, so an FSDP split
# would all-gather every weight per token. Weights are split only over `tensor` (heads, kv heads, MLP, vocabulary:
# Megatron-style, each chip holds 1/tensor of each layer) and replicated over `data`; rows (decode slots) and the KV
# cache's batch go over `data`, the cache's kv heads over `tensor`. A decode mesh has fsdp = 1.
DECODE_RULES: Rules = tuple((name, {"batch": "data", "embed": None}.get(name, target)) for name, target in DEFAULT_RULES)


class ShardingFallbackWarning(UserWarning):
    """An array dimension could not be split over the mesh axes its rule names, so it is replicated along them."""


def _as_target(value: Any, where: str) -> MeshTarget:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    for n in names:
        if n not in MESH_AXES:
            raise ValueError(f"{where}: {n!r} is not a mesh axis {list(MESH_AXES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: mesh axis repeated in {list(names)}")
    return names[0] if len(names) == 1 else (names or None)


@dataclass
class MeshConfig:
    """Sizes of the (data, fsdp, tensor) mesh axes (one of them may be -1 = all remaining devices) and the run's
    overrides of the logical-axis rules, e.g. ``rules: {embed: null, mlp: [fsdp, tensor]}``."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: dict[str, str | list[str] | None] = field(default_factory=dict)

    def validate(self) -> None:
        for name, size in zip(MESH_AXES, (self.data, self.fsdp, self.tensor)):
            if size != -1 and size < 1:
                raise ValueError(f"mesh.{name} = {size}: a size must be >= 1, or -1 for all remaining devices")
        self.axis_rules()

    def axis_rules(self, base: Rules = DEFAULT_RULES) -> Rules:
        """``base`` (:data:`DEFAULT_RULES`, or :data:`DECODE_RULES` for a decode mesh) with this run's overrides
        applied, checked."""
        unknown = sorted(set(self.rules) - set(LOGICAL_AXES))
        if unknown:
            raise ValueError(f"mesh.rules: unknown logical axis {unknown}; known: {list(LOGICAL_AXES)}")
        return tuple((name, _as_target(self.rules.get(name, target), f"mesh.rules.{name}"))
                     for name, target in base)

    def validate_decode(self) -> None:
        """A decode mesh (see :data:`DECODE_RULES`): data and tensor axes only."""
        self.validate()
        if self.fsdp != 1:
            raise ValueError(f"mesh.fsdp = {self.fsdp}: a decode mesh has no fsdp axis (weights are split over "
                             "tensor and replicated over data); put the devices on data or tensor")
        self.axis_rules(DECODE_RULES)

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


def parse_mesh_spec(spec: str, rules: Sequence[str] = (), *, decode: bool = False) -> MeshConfig:
    """A MeshConfig from command-line text: ``spec`` "data=2,tensor=2" (axes not named: the MeshConfig defaults, or
    for a decode mesh fsdp 1 and data the remaining devices) and ``rules`` ["kv_heads=null", "mlp=fsdp+tensor"].
    Raises ValueError naming the bad part."""
    sizes: dict[str, int] = {"fsdp": 1} if decode else {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, eq, value = part.partition("=")
        if not eq or name.strip() not in MESH_AXES:
            raise ValueError(f"mesh {spec!r}: {part!r} is not AXIS=SIZE with AXIS in {list(MESH_AXES)}")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"mesh {spec!r}: size {value!r} of {name.strip()} is not an integer") from None
    overrides: dict[str, Any] = {}
    for r in rules:
        name, eq, value = r.partition("=")
        if not eq:
            raise ValueError(f"rule {r!r}: expected LOGICAL_AXIS=MESH_AXES (e.g. kv_heads=null, mlp=fsdp+tensor)")
        value = value.strip()
        overrides[name.strip()] = None if value.lower() in ("", "null", "none") else value.split("+")
    if decode and "data" not in sizes:
        sizes["data"] = 1 if -1 in sizes.values() else -1
    cfg = MeshConfig(**sizes, rules=overrides)
    cfg.validate_decode() if decode else cfg.validate()
    return cfg


def batch_split_error(batch_size: int, grad_accum: int, data_shards: int) -> str | None:
    """Why a batch of ``batch_size`` sequences cannot train on a mesh with ``data_shards`` = data x fsdp devices
    (each micro-batch is split over them: the compiler would fail with an IndivisibleError), else None."""
    if batch_size % grad_accum or (batch_size // grad_accum) % data_shards:
        return (f"each micro-batch (batch_size {batch_size} / grad_accum {grad_accum}) splits over the {data_shards} "
                f"data-parallel shards (mesh data x fsdp); use a batch_size that is a multiple of "
                f"{data_shards * grad_accum}")
    return None


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all; AOT topology devices work too). Uses the
    physical topology when it can, so that the innermost axis (tensor) runs over the fastest links."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.shape(len(devices))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - fake or odd topologies: fall back to the plain device order
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def decode_mesh(spec: str, rules: Sequence[str] = ()) -> tuple[Mesh, Rules]:
    """(mesh, rules) for sampling (eval, open-teacher distillation): ``spec``/``rules`` as :func:`parse_mesh_spec`
    takes them, over all devices when an axis is -1, else the first data x fsdp x tensor. Raises ValueError."""
    cfg = parse_mesh_spec(spec, rules, decode=True)
    sizes = (cfg.data, cfg.fsdp, cfg.tensor)
    devices = jax.devices() if -1 in sizes else jax.devices()[:math.prod(sizes)]
    return make_mesh(cfg, devices), cfg.axis_rules(DECODE_RULES)


def current_rules() -> Rules:
    """The rules of the enclosing ``nnx.logical_axis_rules`` context, else :data:`DEFAULT_RULES`."""
    return tuple(get_logical_axis_rules()) or DEFAULT_RULES


def logical_to_spec(axes: Sequence[str | None] | None, rules: Rules | None = None) -> P:
    """PartitionSpec for a tuple of logical axis names (None = replicated dimension)."""
    table = dict(current_rules() if rules is None else rules)
    out = []
    for name in axes or ():
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        out.append(None if name is None else table[name])
    return P(*out)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh | jax.sharding.AbstractMesh, what: str = "array") -> P:
    """``spec`` for an array of ``shape``, keeping a mesh axis on a dimension only if the dimension divides by it.

    A dropped axis (e.g. 2 KV heads on tensor=4) is warned about with ``what`` (the parameter's name); a mesh axis
    named on two dimensions of one array is an error in the rules."""
    out, used = [], set()
    for i, (dim, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        keep, size = [], 1
        for n in names:
            if n in used:
                raise ValueError(f"{what}: mesh axis {n!r} is assigned to two dimensions by the sharding rules ({spec})")
            used.add(n)
            if dim % (size * mesh.shape[n]) == 0:
                keep.append(n)
                size *= mesh.shape[n]
            else:
                warnings.warn(f"{what}: dimension {i} (size {dim}) does not divide by mesh axis {n!r} "
                              f"(size {mesh.shape[n]}); replicated along {n!r}", ShardingFallbackWarning, stacklevel=3)
        out.append(keep[0] if len(keep) == 1 else (tuple(keep) or None))
    return P(*out)


def named_sharding(mesh: Mesh, axes: Sequence[str | None] | None, shape: Sequence[int], what: str = "array",
                   rules: Rules | None = None) -> NamedSharding:
    """NamedSharding of an array of ``shape`` with logical ``axes`` on ``mesh`` (rules: see :func:`current_rules`)."""
    return NamedSharding(mesh, fit_spec(logical_to_spec(axes, rules), shape, mesh, what))


def param_shardings(model_or_state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """NamedSharding for every parameter (a pure nested dict, like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``),
    from the parameters' ``out_sharding`` logical names through flax's ``nnx.get_partition_spec``."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    with nnx.logical_axis_rules(current_rules() if rules is None else rules):
        specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    shapes = nnx.to_pure_dict(state)

    def one(path, spec, leaf):
        name = ".".join(str(getattr(k, "key", k)) for k in path)
        return NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh, f"parameter {name}"))

    return jax.tree_util.tree_map_with_path(one, specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules | None = None) -> NamedSharding:
    """Sharding of a [batch, ...] input: the ``batch`` rule on the first dimension, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names, under the mesh and rules the step is traced with
    (:func:`traced_on`); a no-op outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = fit_spec(logical_to_spec(axes), x.shape, mesh, f"activation {tuple(axes)}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def traced_on(fn, mesh: Mesh, rules: Rules | None = None):
    """``fn`` traced with ``mesh`` as the abstract mesh and ``rules`` (default: the current ones, captured now) as the
    logical-axis rules, so that :func:`constrain` inside it pins activations. jit's in/out shardings alone do not
    reach inside a step: without constraints the compiler may replicate e.g. the logits."""
    rules = current_rules() if rules is None else rules

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(rules):
            return fn(*args, **kwargs)

    return wrapped
