"""Continuous batching (`sample/engine.py`) against per-prompt `generate`, and the per-row KV cache it relies on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_distill.model.config import ModelConfig
from jax_distill.model.qwen2 import KVCache, init_model, with_config
from jax_distill.sample.engine import Engine, generate_continuous, window_bucket
from jax_distill.sample.sampler import generate, sample_logits

STOPS = [7, 11, 13]


@pytest.fixture(scope="module")
def model():
    # init_std 0.5: peaked enough that greedy rows and nucleus sets differ, flat enough that stops come at random.
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, head_dim=16, max_position_embeddings=512,
                      tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-6, init_std=0.5)
    return init_model(cfg.resolve())


@pytest.fixture(scope="module")
def requests():
    """12 requests for 4 slots: prompts of 1-30 tokens (few prompt buckets), three of them repeated (samples of one
    problem share the prompt's prefill), two budgets (few compiles)."""
    rng = np.random.default_rng(0)
    lens = [1, 3, 5, 9, 12, 16, 2, 30, 7]
    prompts = [rng.integers(0, 300, n).tolist() for n in lens]
    prompts = prompts[:5] + [prompts[1]] + prompts[5:] + [prompts[7], prompts[1]]
    budgets = [[4, 20][i % 2] for i in range(len(prompts))]
    seeds = [1000 + 7 * i for i in range(len(prompts))]
    return prompts, budgets, seeds


def _per_prompt(model, prompts, budgets, seeds, **kw):
    return [generate(model, [p], max_new_tokens=b, seed=[s], stop_ids=STOPS, **kw)[0]
            for p, b, s in zip(prompts, budgets, seeds)]


@pytest.mark.parametrize("sampling", [
    {"temperature": 0.0},
    {"temperature": 0.8, "top_p": 0.9},  # top-p alone: nucleus larger than the 256 candidates -> full-sort fallback
    {"temperature": 1.0, "top_k": 20, "top_p": 0.8},
], ids=["greedy", "top_p", "top_k+top_p"])
def test_continuous_equals_per_prompt_generate(model, requests, sampling):
    prompts, budgets, seeds = requests
    ref = _per_prompt(model, prompts, budgets, seeds, **sampling)
    engine = Engine(model, slots=4, chunk_steps=8, min_window=32)
    got = engine.generate(prompts, budgets, seed=seeds, stop_ids=STOPS, **sampling)
    assert got == ref
    # The workload really exercised the scheduler: stops before the budget, refills, a cache resize and compaction.
    assert any(len(r) < b for r, b in zip(ref, budgets))
    stats = engine.stats
    assert stats.get("prefills", 0) > 3 and stats.get("compactions", 0) >= 1 and stats.get("resizes", 0) >= 1
    assert stats["prefill_rows"] == len({tuple(p) for p in prompts})  # each distinct prompt prefilled once


def test_continuous_stacked_cache_and_bf16_cache(model, requests):
    """Plain temperature sampling (no filter) with the stacked cache in the layer scan; greedy with a bf16 cache."""
    prompts, budgets, seeds = requests
    prompts, budgets, seeds = prompts[:5], budgets[:5], seeds[:5]  # one prompt bucket
    ref = _per_prompt(model, prompts, budgets, seeds, temperature=1.0)
    assert generate_continuous(model, prompts, budgets, temperature=1.0, seed=seeds, stop_ids=STOPS, slots=2,
                               unroll_layers=False) == ref
    ref16 = _per_prompt(model, prompts, budgets, seeds, cache_dtype="bfloat16")
    assert generate_continuous(model, prompts, budgets, seed=seeds, stop_ids=STOPS, slots=2,
                               cache_dtype="bfloat16") == ref16


def test_engine_one_budget_progress_and_errors(model):
    prompts = [[1, 2, 3], [4, 5], [6]]
    seen = []
    out = generate_continuous(model, prompts, 5, stop_ids=[], slots=2, on_done=seen.append)
    assert out == generate(model, prompts, max_new_tokens=5, stop_ids=[])
    assert sorted(seen) == [0, 1, 2] and all(len(o) == 5 for o in out)
    assert generate_continuous(model, [], 5) == []
    with pytest.raises(ValueError):
        generate_continuous(model, [[]], 5)
    with pytest.raises(ValueError):
        generate_continuous(model, prompts, [5, 5], stop_ids=[])


@pytest.mark.parametrize("per_layer", [False, True])
def test_per_row_cache_positions_equal_full_forward(model, per_layer):
    """Rows at different write positions (KVCache.index [B]) decode exactly like a full forward pass."""
    m = with_config(model, scan_layers=not per_layer)
    seq = np.random.default_rng(1).integers(0, 300, (2, 20)).astype(np.int32)
    full = np.asarray(m(seq))
    lens = [5, 9]
    toks = np.zeros((2, 12), np.int32)
    seg = np.zeros((2, 12), np.int32)
    for r, n in enumerate(lens):
        toks[r, :n], seg[r, :n] = seq[r, :n], 1
    cache = KVCache.zeros(m.config, 2, 24, per_row=True)
    assert cache.index.shape == (2,)
    _, cache = m(toks, np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12)), seg, cache)
    cache = cache._replace(index=jnp.asarray(lens, jnp.int32))
    for _ in range(8):
        idx = np.asarray(cache.index)
        logits, cache = m(seq[np.arange(2), idx][:, None], idx[:, None], np.ones((2, 1), np.int32), cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), idx],
                                   atol=1e-5 * np.abs(full).max(), rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.index), np.asarray(lens) + 8)


def test_top_candidates_path_equals_full_sort():
    """The `lax.top_k` candidates (with the fallback for rows whose nucleus is larger) draw the full sort's tokens."""
    rng = np.random.default_rng(2)
    peaked = rng.normal(0, 8, (6, 1000))  # nucleus inside 16 candidates
    flat = rng.normal(0, 0.1, (2, 1000))  # nucleus of hundreds of tokens: fallback
    keys = jax.random.split(jax.random.key(3), 8)
    for logits in (peaked, np.concatenate([peaked, flat])):
        logits = jnp.asarray(logits, jnp.float32)
        k = keys[:logits.shape[0]]
        for top_p, top_k in ((0.9, 0), (0.95, 16), (1.0, 5)):
            args = (logits, k, jnp.float32(1.0), jnp.float32(top_p), jnp.int32(top_k))
            full = sample_logits(*args, use_filter=True, cap=0)
            fast = sample_logits(*args, use_filter=True, cap=16)
            np.testing.assert_array_equal(np.asarray(full), np.asarray(fast))


def test_window_bucket():
    assert [window_bucket(n) for n in (1, 64, 65, 96, 97, 129, 200, 1000)] == [64, 64, 96, 96, 128, 192, 256, 1024]
    assert window_bucket(10, minimum=16) == 16


class _CharTokenizer:
    """Just enough tokenizer for `evaluate`: characters to ids."""

    def encode_chat(self, messages, add_generation_prompt=True):
        return [ord(c) % 290 + 1 for c in messages[0]["content"]][:40], None

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_evaluate_continuous_equals_static(model, tmp_path):
    import functools

    from jax_distill.eval.benchmarks import Problem
    from jax_distill.eval.evaluate import evaluate

    problems = [Problem(i, "p" * (3 + 9 * i), str(i), "integer") for i in range(3)]
    kw = {"tokenizer": _CharTokenizer(), "n_samples": 3, "max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95,
          "seed": 5, "progress": False, "budgets": [4, 12]}
    engine = Engine(model, slots=4)
    evaluate(problems, generate_fn=functools.partial(engine.generate, stop_ids=STOPS), out_dir=tmp_path / "c", **kw)
    evaluate(problems, generate_fn=functools.partial(generate, model, stop_ids=STOPS), out_dir=tmp_path / "s",
             continuous=False, batch_size=4, **kw)
    for name in ("samples.jsonl", "results.json"):
        assert (tmp_path / "c" / name).read_text() == (tmp_path / "s" / name).read_text()
