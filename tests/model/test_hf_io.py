"""Hugging Face safetensors in and out: round trips, sharded loading, presets, and bad checkpoints."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jax_distill import load_pretrained, save_pretrained
from jax_distill.model.config import ModelConfig, UnsupportedConfigError, from_hf_config
from jax_distill.model.hf_io import CheckpointMismatchError
from jax_distill.model.presets import PRESETS
from jax_distill.sharding import MeshConfig, make_mesh
from tests.model.hf_reference import hf_logits, make_hf_model


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_in_transformers_with_same_logits(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    hf = make_hf_model(tmp_path / "src", tied=tied)
    ours = load_pretrained(tmp_path / "src")
    save_pretrained(ours, tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = np.arange(40, dtype=np.int64).reshape(2, 20) % 300
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(hf, ids))


def test_import_export_import_is_bit_exact_and_sharded_files(tmp_path):
    make_hf_model(tmp_path / "src", tied=False, layers=3)
    first = load_pretrained(tmp_path / "src")
    save_pretrained(first, tmp_path / "out", max_shard_bytes=40_000)  # force several shards + index
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    second = load_pretrained(tmp_path / "out")
    for a, b in zip(_leaves(first), _leaves(second)):
        np.testing.assert_array_equal(a, b)


def test_bf16_export_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    make_hf_model(tmp_path / "src")
    save_pretrained(load_pretrained(tmp_path / "src"), tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = load_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert back.embed[...].dtype == np.dtype("bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert str(next(hf.parameters()).dtype) == "torch.bfloat16"


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_load_matches_unsharded(tmp_path, mesh_shape):
    make_hf_model(tmp_path, hidden=48, heads=8, kv=4, head_dim=6, tied=False, vocab=304, inter=96)
    mesh = make_mesh(MeshConfig(*mesh_shape))
    sharded = load_pretrained(tmp_path, mesh=mesh)
    plain = load_pretrained(tmp_path)
    q = sharded.layers.q_proj[...]
    assert len(q.sharding.device_set) == 8
    assert not q.sharding.is_fully_replicated
    for a, b in zip(_leaves(sharded), _leaves(plain)):
        np.testing.assert_array_equal(a, b)
    ids = np.arange(32, dtype=np.int32).reshape(4, 8)
    with jax.set_mesh(mesh):
        got = np.asarray(jax.jit(lambda m, x: m(x))(sharded, ids))
    np.testing.assert_allclose(got, np.asarray(plain(ids)), atol=1e-5, rtol=0)


def test_preset_param_counts_equal_transformers(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for name in [n for n in PRESETS if n.startswith("qwen")]:
        cfg = ModelConfig(preset=name).resolve()
        with torch.device("meta"):
            hf = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.to_hf_config().items()
                                                 if k not in ("architectures", "model_type")}))
        n_hf = sum(p.numel() for p in hf.parameters())  # tied weights are one parameter
        assert cfg.param_count() == n_hf, name
        # and the Flax module built abstractly from the preset has the same count
        abstract = nnx.eval_shape(lambda: __import__("jax_distill").init_model(cfg))
        n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
        assert n_ours == n_hf, name


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_hf_model(tmp_path / "ok", tied=False)
    tensors = load_file(tmp_path / "ok" / "model.safetensors")
    cfg = (tmp_path / "ok" / "config.json").read_text()

    def variant(name, mutate):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(cfg)
        t = dict(tensors)
        mutate(t)
        save_file(t, d / "model.safetensors")
        return d

    missing = variant("missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(missing)
    extra = variant("extra", lambda t: t.__setitem__("model.layers.9.foo", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors.*model\.layers\.9\.foo"):
        load_pretrained(extra)
    bad = variant("bad", lambda t: t.__setitem__("model.layers.0.self_attn.k_proj.weight", np.zeros((5, 48), np.float32)))
    with pytest.raises(CheckpointMismatchError, match=r"k_proj\.weight has shape \[5, 48\], config\.json implies \[24, 48\]"):
        load_pretrained(bad)


def test_unsupported_config_features_raise():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, model_type="qwen2")
    with pytest.raises(UnsupportedConfigError, match="sliding_window"):
        from_hf_config({**base, "use_sliding_window": True, "sliding_window": 4096})
    with pytest.raises(UnsupportedConfigError, match="rope_scaling"):
        from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedConfigError, match="Qwen2"):
        from_hf_config({**base, "model_type": "llama"})
    assert from_hf_config({**base, "rope_scaling": None}).rope_theta == 10000.0


def test_preset_name_gives_random_model():
    m = load_pretrained("tiny")
    assert m(np.zeros((1, 3), np.int32)).shape == (1, 3, 512)
    with pytest.raises(FileNotFoundError, match="nor a preset"):
        load_pretrained("no-such-model")


def test_context_extension_overrides_rope_and_is_exported(tmp_path):
    """Fine-tuning past a checkpoint's published context (Qwen2.5-Math: 4k) is explicit: rope_theta and
    max_position_embeddings replace the checkpoint's, the export carries them, and transformers agrees."""
    from transformers import AutoModelForCausalLM

    make_hf_model(tmp_path / "src")
    ours = load_pretrained(tmp_path / "src", context={"rope_theta": 3e5, "max_position_embeddings": 8192})
    assert (ours.config.rope_theta, ours.config.max_position_embeddings) == (3e5, 8192)
    save_pretrained(ours, tmp_path / "out")
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    theta = hf_cfg.get("rope_theta", (hf_cfg.get("rope_parameters") or {}).get("rope_theta"))
    assert theta == 3e5 and hf_cfg["max_position_embeddings"] == 8192
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = np.arange(40, dtype=np.int64).reshape(2, 20) % 300
    np.testing.assert_allclose(np.asarray(ours(jax.numpy.asarray(ids, jax.numpy.int32))), hf_logits(back, ids),
                               atol=2e-4, rtol=2e-4)
    with pytest.raises(ValueError, match="hidden_size"):
        load_pretrained(tmp_path / "src", context={"hidden_size": 64})
