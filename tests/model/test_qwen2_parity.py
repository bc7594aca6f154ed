"""Our Flax Qwen2 against transformers' Qwen2ForCausalLM, fp32, on tiny random models built locally."""

import numpy as np
import pytest

from jax_distill import load_pretrained
from tests.model.hf_reference import hf_logits, make_hf_model

CONFIGS = {
    "tied_gqa2_theta1e6": dict(hidden=48, heads=6, kv=3, tied=True, theta=1e6),
    "untied_mha_theta1e4": dict(hidden=40, heads=4, kv=4, tied=False, theta=1e4),
    "gqa7_odd_hidden": dict(hidden=105, heads=14, kv=2, head_dim=8, tied=False, theta=1e6, inter=90),
    "odd_hidden_mha": dict(hidden=75, heads=3, kv=3, head_dim=10, tied=True, theta=1e4, inter=77),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf = make_hf_model(tmp_path, **CONFIGS[name])
    ours = load_pretrained(tmp_path, dtype="float32")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=(3, 37)).astype(np.int32)
    ref = hf_logits(hf, ids)
    got = np.asarray(ours(ids))
    scale = np.abs(ref).max()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * scale, (np.abs(got - ref).max(), scale)


def test_gqa_ratio_7_is_grouped(tmp_path):
    # 14 query heads over 2 KV heads: ratio 7, the config that catches a wrong head grouping.
    hf = make_hf_model(tmp_path, hidden=112, heads=14, kv=2)
    assert hf.config.num_attention_heads // hf.config.num_key_value_heads == 7
    ours = load_pretrained(tmp_path)
    ids = np.arange(20, dtype=np.int32)[None] % 300
    ref = hf_logits(hf, ids)
    assert np.abs(np.asarray(ours(ids)) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_packed_row_equals_separate_documents(tmp_path):
    hf = make_hf_model(tmp_path, hidden=48, heads=6, kv=2, tied=False)
    ours = load_pretrained(tmp_path)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 300, size=13).astype(np.int32)
    b = rng.integers(0, 300, size=9).astype(np.int32)
    pad = 4
    row = np.concatenate([a, b, np.zeros(pad, np.int32)])[None]
    seg = np.concatenate([np.ones(13), np.full(9, 2), np.zeros(pad)]).astype(np.int32)[None]
    pos = np.concatenate([np.arange(13), np.arange(9), np.zeros(pad)]).astype(np.int32)[None]
    packed = np.asarray(ours(row, positions=pos, segment_ids=seg))[0]
    alone_a = np.asarray(ours(a[None]))[0]
    alone_b = np.asarray(ours(b[None]))[0]
    np.testing.assert_allclose(packed[:13], alone_a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[13:22], alone_b, atol=1e-5, rtol=0)
    # And both agree with transformers run on each document alone.
    np.testing.assert_allclose(alone_b, hf_logits(hf, b[None])[0], atol=1e-4 * np.abs(alone_b).max(), rtol=0)


def test_attention_implementations_agree(tmp_path):
    make_hf_model(tmp_path, hidden=48, heads=6, kv=2)
    ids = np.arange(30, dtype=np.int32).reshape(2, 15)
    ref = np.asarray(load_pretrained(tmp_path, attention="xla")(ids))
    dpa = np.asarray(load_pretrained(tmp_path, attention="dot_product")(ids))
    np.testing.assert_allclose(dpa, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_scan_remat_and_unrolled_agree(tmp_path):
    make_hf_model(tmp_path, layers=3)
    ids = np.arange(24, dtype=np.int32).reshape(2, 12)
    ref = np.asarray(load_pretrained(tmp_path, scan_layers=True)(ids))
    for kw in (dict(scan_layers=False), dict(remat="full"), dict(remat="dots")):
        np.testing.assert_allclose(np.asarray(load_pretrained(tmp_path, **kw)(ids)), ref, atol=1e-6, rtol=0)


def test_bf16_compute_close_to_fp32(tmp_path):
    make_hf_model(tmp_path)
    ids = np.arange(24, dtype=np.int32).reshape(2, 12)
    ref = np.asarray(load_pretrained(tmp_path)(ids))
    got = np.asarray(load_pretrained(tmp_path, dtype="float32", compute_dtype="bfloat16")(ids))
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
