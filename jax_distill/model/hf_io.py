"""Hugging Face safetensors in and out, tensor by tensor.

Our layout differs from transformers' in two ways: decoder layers are stacked along a leading axis, and projections
are stored [in, out] with heads split out ([embed, heads, head_dim]) so that the tensor axis shards whole heads.
``_TO_OURS`` / ``_TO_HF`` are the only places that know the correspondence.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_distill.model.config import ModelConfig, from_hf_config, get_preset
from jax_distill.model.presets import preset_key
from jax_distill.model.qwen2 import Qwen2ForCausalLM, layer_shapes
from jax_distill.sharding import param_shardings


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the architecture in its config (missing, extra or mis-shaped)."""


# Per-layer HF names (under model.layers.{i}.) for each of our stacked parameters.
_LAYER_HF = {
    "input_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_proj": "self_attn.k_proj.weight",
    "k_bias": "self_attn.k_proj.bias",
    "v_proj": "self_attn.v_proj.weight",
    "v_bias": "self_attn.v_proj.bias",
    "o_proj": "self_attn.o_proj.weight",
    "post_norm": "post_attention_layernorm.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
}
# Tensors transformers may store that carry no weights of their own.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def _hf_shape(name: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one layer's tensor given our per-layer shape (no layers axis)."""
    if name in ("q_proj", "k_proj", "v_proj"):  # ours [D, H, hd] <- HF [H*hd, D]
        return (ours[1] * ours[2], ours[0])
    if name.endswith("bias"):  # [H, hd] <- [H*hd]
        return (ours[0] * ours[1],)
    if name == "o_proj":  # [H, hd, D] <- [D, H*hd]
        return (ours[2], ours[0] * ours[1])
    if name in ("gate_proj", "up_proj", "down_proj"):
        return (ours[1], ours[0])
    return ours


def _to_ours(name: str, t: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if name in ("q_proj", "k_proj", "v_proj"):
        return t.T.reshape(ours)
    if name == "o_proj":
        return t.T.reshape(ours)
    if name in ("gate_proj", "up_proj", "down_proj", "lm_head"):
        return t.T
    return t.reshape(ours)


def _to_hf(name: str, t: np.ndarray) -> np.ndarray:
    if name in ("q_proj", "k_proj", "v_proj"):
        return t.reshape(t.shape[0], -1).T
    if name == "o_proj":
        return t.reshape(-1, t.shape[-1]).T
    if name in ("gate_proj", "up_proj", "down_proj", "lm_head"):
        return t.T
    if name.endswith("bias"):
        return t.reshape(-1)
    return t


class _SafetensorsReader:
    """Reads single tensors from a (possibly sharded) safetensors checkpoint; keeps a few recent ones cached."""

    def __init__(self, directory: Path, cache_size: int = 4):
        from safetensors import safe_open

        self._open = safe_open
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / f for name, f in weight_map.items()}
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors (or model.safetensors.index.json) in {directory}")
            self.files = {}
            for f in files:
                with safe_open(f, "numpy") as h:
                    for name in h.keys():
                        self.files[name] = f
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in sorted(set(self.files.values())):
            with safe_open(f, "numpy") as h:
                for name in h.keys():
                    self.shapes[name] = tuple(h.get_slice(name).get_shape())
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def get(self, name: str) -> np.ndarray:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        with self._open(self.files[name], "numpy") as h:
            t = h.get_tensor(name)
        self._cache[name] = t
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return t


def _expected_hf_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size), "model.norm.weight": (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    for name, shape in layer_shapes(cfg).items():
        for i in range(cfg.num_hidden_layers):
            shapes[f"model.layers.{i}.{_LAYER_HF[name]}"] = _hf_shape(name, shape[1:])
    return shapes


def _check_tensors(reader: _SafetensorsReader, cfg: ModelConfig, where: Path) -> None:
    expected = _expected_hf_tensors(cfg)
    found = {k: v for k, v in reader.shapes.items() if not _IGNORED.search(k)}
    if cfg.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # some exports store the tied head too; transformers ignores it
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    bad = [(k, expected[k], found[k]) for k in sorted(set(expected) & set(found)) if tuple(expected[k]) != found[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if extra:
        problems.append(f"unexpected tensors: {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    for k, want, got in bad[:10]:
        problems.append(f"tensor {k} has shape {list(got)}, config.json implies {list(want)}")
    if problems:
        raise CheckpointMismatchError(f"{where}: " + "; ".join(problems))


def _param_sources(cfg: ModelConfig, reader: _SafetensorsReader) -> dict[tuple[str, ...], Callable[[], np.ndarray]]:
    """Our parameter path -> function building the full array (numpy, checkpoint dtype)."""
    shapes = layer_shapes(cfg)
    out: dict[tuple[str, ...], Callable[[], np.ndarray]] = {
        ("embed",): lambda: reader.get("model.embed_tokens.weight"),
        ("final_norm",): lambda: reader.get("model.norm.weight"),
    }
    if not cfg.tie_word_embeddings:
        out[("lm_head",)] = lambda: reader.get("lm_head.weight").T
    for name, shape in shapes.items():
        def build(name=name, shape=shape):
            return np.stack([_to_ours(name, reader.get(f"model.layers.{i}.{_LAYER_HF[name]}"), shape[1:])
                             for i in range(cfg.num_hidden_layers)])
        out[("layers", name)] = build
    return out


def _layer_slice_source(cfg, reader, name, shape):
    """Callback for make_array_from_callback: reads only the layers a shard needs, one tensor at a time."""

    def cb(index):
        layer_idx = range(*index[0].indices(shape[0]))
        rest = tuple(index[1:])
        parts = [_to_ours(name, reader.get(f"model.layers.{i}.{_LAYER_HF[name]}"), shape[1:])[rest] for i in layer_idx]
        return np.stack(parts)

    return cb


def _abstract_model(cfg: ModelConfig) -> Qwen2ForCausalLM:
    return nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))


def load_pretrained(path: str | Path, dtype: str = "float32", *, compute_dtype: str | None = None,
                    mesh: Mesh | None = None, seed: int = 0, context: dict[str, Any] | None = None,
                    **execution: Any) -> Qwen2ForCausalLM:
    """Load a Hugging Face Qwen2 checkpoint directory (config.json + safetensors, single or sharded).

    ``dtype``: parameter dtype (the compute dtype too unless ``compute_dtype`` is given). With ``mesh``, every
    parameter is created directly as a sharded global array, reading only the tensors each local shard needs, so a
    72B checkpoint never exists whole in one host's memory. ``execution``: remat, scan_layers, attention.
    ``context``: ``rope_theta`` / ``max_position_embeddings`` replacing the checkpoint's, to fine-tune at a longer
    context than it was published with (e.g. Qwen2.5-Math: 4k, theta 1e4); no tensor changes shape.
    ``path`` may also be a preset name (e.g. "qwen2.5-0.5b"): a randomly initialised model of that shape, or a
    gs:// URI (downloaded to a temporary folder first).
    """
    from jax_distill.paths import download, is_remote

    if is_remote(path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="jax_distill_hf_") as tmp:
            return load_pretrained(download(path, tmp), dtype, compute_dtype=compute_dtype, mesh=mesh, seed=seed,
                                   context=context, **execution)
    p = Path(path)
    if not p.is_dir():
        if preset_key(str(path)) is not None:
            cfg = get_preset(str(path), dtype=compute_dtype or dtype, param_dtype=dtype, **execution)
            from jax_distill.model.qwen2 import init_model

            return init_model(cfg, seed)
        raise FileNotFoundError(f"{path}: not a directory with config.json + safetensors, nor a preset name")
    cfg = from_hf_config(p / "config.json", dtype=compute_dtype or dtype, param_dtype=dtype, **execution)
    if context:
        unknown = set(context) - {"rope_theta", "max_position_embeddings"}
        if unknown:
            raise ValueError(f"context overrides may change rope_theta and max_position_embeddings only, not {unknown}")
        cfg = dataclasses.replace(cfg, **{k: v for k, v in context.items() if v is not None})
    reader = _SafetensorsReader(p)
    _check_tensors(reader, cfg, p)
    abstract = _abstract_model(cfg)
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)
    shardings = param_shardings(abstract, mesh) if mesh is not None else None
    pdt = jnp.dtype(dtype)
    sources = _param_sources(cfg, reader)
    layer_shape = layer_shapes(cfg)

    def assign(key: tuple[str, ...]):
        node, shard = pure, shardings
        for k in key[:-1]:
            node = node[k]
            shard = shard[k] if shard is not None else None
        leaf = node[key[-1]]
        shape = tuple(leaf.shape)
        if mesh is None:
            node[key[-1]] = jnp.asarray(sources[key](), dtype=pdt)
            return
        sharding = shard[key[-1]]
        if key[0] == "layers":
            cb = _layer_slice_source(cfg, reader, key[1], layer_shape[key[1]])
        else:
            full = sources[key]
            cb = lambda index, full=full: full()[index]  # noqa: E731 - embeddings/head: one tensor each
        node[key[-1]] = jax.make_array_from_callback(shape, sharding, lambda idx: np.asarray(cb(idx), dtype=pdt))

    for key in sources:
        assign(key)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def save_pretrained(model: Qwen2ForCausalLM, path: str | Path, *, dtype: str | None = None,
                    tokenizer: Any = None, max_shard_bytes: int = 4 * 2**30):
    """Write ``model`` in the Hugging Face layout (config.json, sharded safetensors + index) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads. Streams one layer's tensor at a time to host.

    ``path``: a local folder or a gs:// URI (files are staged locally, then copied). Every process must call this
    (sharded tensors are gathered collectively); only process 0 writes. Returns the folder as an ``epath.Path``.
    ``dtype``: storage dtype (default: the parameter dtype). ``tokenizer`` (a ``data.tokenize.Tokenizer``): its
    files and a ``generation_config.json`` go with the weights, making the folder a self-contained checkpoint.
    """
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    from jax_distill.paths import as_path, is_remote, upload

    cfg = model.config
    dest = as_path(path)
    writer = jax.process_index() == 0
    remote = is_remote(dest)
    out = Path(tempfile.mkdtemp(prefix="jax_distill_export_")) if remote else Path(os.fspath(dest))
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    store = np.dtype(jnp.dtype(dtype or cfg.param_dtype))

    def host(x: jax.Array) -> np.ndarray:
        if jax.process_count() > 1 and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x)).astype(store)

    def tensors():
        yield "model.embed_tokens.weight", lambda: host(model.embed[...])
        layers = model.layers.weights()
        for i in range(cfg.num_hidden_layers):
            for name in _LAYER_HF:
                yield f"model.layers.{i}.{_LAYER_HF[name]}", lambda n=name, i=i: _to_hf(n, host(layers[n][i]))
        yield "model.norm.weight", lambda: host(model.final_norm[...])
        if model.lm_head is not None:
            yield "lm_head.weight", lambda: _to_hf("lm_head", host(model.lm_head[...]))

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    weight_map: dict[str, int] = {}
    files: list[str] = []
    total = 0

    def flush(final: bool) -> None:
        nonlocal size
        if shards[-1]:
            files.append(str(len(files)))
            if writer:
                save_file(shards[-1], out / f"_part{len(files) - 1}.safetensors", metadata={"format": "pt"})
            shards[-1] = {}
            size = 0

    for name, get in tensors():
        t = np.ascontiguousarray(get())
        if size and size + t.nbytes > max_shard_bytes:
            flush(False)
        shards[-1][name] = t
        weight_map[name] = len(files)
        size += t.nbytes
        total += t.nbytes
    flush(True)
    if not writer:
        return dest
    n = len(files)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors" for i in range(n)]
    for i, final in enumerate(names):
        (out / f"_part{i}.safetensors").rename(out / final)
    for stale in out.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    else:
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
    hf_cfg = cfg.to_hf_config()
    hf_cfg["torch_dtype"] = str(store) if store != np.dtype(jnp.bfloat16) else "bfloat16"
    hf_cfg["dtype"] = hf_cfg["torch_dtype"]
    extra: list[str] = []
    if tokenizer is not None:
        before = {p.name for p in out.iterdir()}
        tokenizer.save(out)
        (out / "generation_config.json").write_text(json.dumps(tokenizer.generation_config(), indent=2))
        extra = sorted({p.name for p in out.iterdir()} - before)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if remote:
        # Weights first, config.json last: a reader that finds config.json finds the whole export.
        upload(out, dest, only=[*names, *(["model.safetensors.index.json"] if n > 1 else []), *extra, "config.json"])
        shutil.rmtree(out, ignore_errors=True)
    return dest
