"""The KV-cache sampler against full forward passes and transformers' greedy generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_distill import generate, load_pretrained
from jax_distill.model.qwen2 import KVCache, with_config
from jax_distill.sample.sampler import sample_logits
from tests.model.hf_reference import make_hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    hf = make_hf_model(d, hidden=64, heads=4, kv=2, layers=2, vocab=300, tied=False, inter=128)
    return hf, load_pretrained(d)


@pytest.mark.parametrize("per_layer", [False, True])  # stacked cache in the layer scan; one buffer per layer
def test_cached_decode_logits_equal_full_forward(tiny, per_layer):
    _, model = tiny
    model = with_config(model, scan_layers=not per_layer)
    seq = np.random.default_rng(0).integers(0, 300, (2, 24)).astype(np.int32)
    full = np.asarray(model(seq))
    prompt = 10
    cache = KVCache.zeros(model.config, 2, 32)
    assert isinstance(cache.k, tuple) == per_layer
    logits, cache = model(seq[:, :prompt], None, None, cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, :prompt], atol=1e-5 * np.abs(full).max(), rtol=0)
    for t in range(prompt, 24):
        pos = np.full((2, 1), t, np.int32)
        step_logits, cache = model(seq[:, t:t + 1], pos, np.ones((2, 1), np.int32), cache)
        np.testing.assert_allclose(np.asarray(step_logits)[:, 0], full[:, t], atol=1e-5 * np.abs(full).max(), rtol=0)


@pytest.mark.parametrize("unroll_layers", [True, False])
def test_greedy_generate_equals_transformers(tiny, unroll_layers):
    import torch

    hf, model = tiny
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 300, n).tolist() for n in (5, 17, 9, 30)]
    ours = generate(model, prompts, max_new_tokens=24, temperature=0.0, stop_ids=[299], unroll_layers=unroll_layers)
    for p, got in zip(prompts, ours):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, eos_token_id=299,
                              pad_token_id=0)[0, len(p):].tolist()
        if ref and ref[-1] == 299:
            ref = ref[:-1]
        assert got == ref


def test_cache_grows_with_decoding_and_samples_are_unchanged(tiny, monkeypatch):
    """Decode attention reads the filled part of the cache: the cache grows by length buckets (a loop starts with at
    most a third of its cache empty and runs until it is full), and the samples equal those of one full-budget cache (and greedy ones equal
    transformers')."""
    import torch

    from jax_distill.sample import sampler

    hf, model = tiny
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 300, n).tolist() for n in (5, 14)]  # padded to 16 slots
    windows = []
    decode = sampler._decode_padded

    def spy(graphdef, params, layer_weights, cache, state, end_step, *args, **kw):
        windows.append((cache.segment_ids.shape[1], int(end_step)))
        return decode(graphdef, params, layer_weights, cache, state, end_step, *args, **kw)

    monkeypatch.setattr(sampler, "_decode_padded", spy)
    greedy = generate(model, prompts, max_new_tokens=200, stop_ids=[])
    sampled = generate(model, prompts, max_new_tokens=200, temperature=1.0, top_p=0.9, seed=[7, 8], stop_ids=[])
    grown = windows[:len(windows) // 2]
    assert [w for w, _ in grown] == [64, 96, 128, 192, 215]  # 16 prompt slots + 199 fed-back tokens = 215
    for w, end in grown:
        assert 16 + end - 1 == w  # slots written when the loop stops at step `end`: it ran until its cache was full

    windows.clear()
    assert generate(model, prompts, max_new_tokens=200, stop_ids=[], grow_cache=False) == greedy
    assert generate(model, prompts, max_new_tokens=200, temperature=1.0, top_p=0.9, seed=[7, 8], stop_ids=[],
                    grow_cache=False) == sampled
    assert [w for w, _ in windows] == [215, 215]
    for p, got in zip(prompts, greedy):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=200, min_new_tokens=200, do_sample=False,
                              pad_token_id=0)[0, len(p):].tolist()
        assert got == ref


def test_stop_tokens_end_rows_independently(tiny):
    _, model = tiny
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    free = generate(model, prompts, max_new_tokens=12)
    stop = free[0][3]  # make row 0 stop at its 4th token
    out = generate(model, prompts, max_new_tokens=12, stop_ids=[stop])
    assert out[0] == free[0][:free[0].index(stop)]
    assert len(out[0]) <= 3
    first_stop = free[1].index(stop) if stop in free[1] else len(free[1])
    assert out[1] == free[1][:first_stop]


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny):
    _, model = tiny
    prompts = [[1, 2, 3], [7, 8, 9, 10]]
    a = generate(model, prompts, max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=[11, 12], stop_ids=[])
    b = generate(model, prompts[1:], max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=[12], stop_ids=[])
    c = generate(model, prompts, max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=[13, 14], stop_ids=[])
    assert a[1] == b[0]
    assert a != c
    assert all(len(x) == 16 for x in a)


def test_top_k_and_top_p_restrict_support():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.split(jax.random.key(0), 4000)
    one = lambda **kw: np.asarray(sample_logits(logits, keys, jnp.float32(1.0), use_filter=True, **kw))
    assert set(one(top_p=jnp.float32(1.0), top_k=jnp.int32(2)).tolist()) == {0, 1}
    assert set(one(top_p=jnp.float32(0.7), top_k=jnp.int32(0)).tolist()) == {0, 1}
    draws = one(top_p=jnp.float32(1.0), top_k=jnp.int32(0))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    greedy = np.asarray(sample_logits(logits, keys, jnp.float32(0.0), jnp.float32(1.0), jnp.int32(0), use_filter=False))
    assert (greedy == 0).all()


def test_sharded_generate_matches_unsharded(tiny):
    from jax_distill.sharding import MeshConfig, make_mesh

    _, model = tiny
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    ref = generate(model, prompts, max_new_tokens=8, stop_ids=[])
    mesh = make_mesh(MeshConfig(2, 2, 2))
    assert generate(model, prompts, max_new_tokens=8, stop_ids=[], mesh=mesh) == ref
