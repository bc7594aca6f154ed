"""The sharded SFT step: mesh-independence, gradient accumulation, and a PyTorch + transformers reference run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_distill import load_pretrained
from jax_distill.model.config import ModelConfig
from jax_distill.model.qwen2 import init_model, with_config
from jax_distill.sharding import MeshConfig, make_mesh
from jax_distill.train.config import OptimConfig
from jax_distill.train.optim import lr_schedule, make_optimizer
from jax_distill.sharding import param_shardings
from jax_distill.train.step import build_step_fns, loss_terms, model_params
from tests.model.hf_reference import make_hf_model

CFG = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  max_position_embeddings=512)


def packed_batch(b=8, s=32, vocab=256, seed=0):
    """Rows of two packed documents each, prompt tokens masked out, some padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, s)).astype(np.int32)
    seg = np.zeros((b, s), np.int32)
    pos = np.zeros((b, s), np.int32)
    mask = np.zeros((b, s), np.float32)
    for r in range(b):
        cut = rng.integers(8, s - 8)
        end = s - rng.integers(0, 4)
        seg[r, :cut], seg[r, cut:end] = 1, 2
        pos[r, :cut], pos[r, cut:end] = np.arange(cut), np.arange(end - cut)
        mask[r, 3:cut - 1] = 1  # response tokens of doc 1 (no target across the boundary)
        mask[r, cut + 2:end - 1] = 1
    targets = np.roll(ids, -1, axis=1)
    return {"input_ids": ids, "targets": targets, "loss_mask": mask, "segment_ids": seg, "positions": pos}


def grads_on_mesh(mesh, model, batch):
    graphdef, _ = nnx.split(model)
    p_shard = param_shardings(model, mesh)

    def f(params, batch):
        (l, t), g = jax.value_and_grad(lambda p: loss_terms(graphdef, p, batch), has_aux=True)(params)
        return l / t, jax.tree.map(lambda x: x / t, g)

    out = jax.jit(f, in_shardings=(p_shard, None))(jax.device_put(model_params(model), p_shard), batch)
    return jax.device_get(out)


@pytest.mark.parametrize("shape", [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_loss_and_grads_independent_of_mesh(shape):
    model = init_model(CFG, seed=3)
    batch = packed_batch()
    ref_loss, ref_grads = grads_on_mesh(make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), model, batch)
    devices = jax.devices()[: int(np.prod(shape))]
    loss, grads = grads_on_mesh(make_mesh(MeshConfig(*shape), devices), model, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_accumulated_microbatches_equal_one_big_batch():
    import optax

    model = init_model(CFG, seed=1)
    # Plain SGD: parameter differences are then gradient differences (Adam would amplify fp32 noise on ~0 grads).
    opt = optax.sgd(1.0)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    batch = packed_batch(b=8)
    results = []
    for k in (1, 4):
        fns = build_step_fns(model, opt, mesh, grad_accum=k)
        state = fns.init(model_params(model))
        for _ in range(2):
            state, metrics = fns.step(state, batch)
        results.append((jax.device_get(state["params"]), float(metrics["loss"]), float(metrics["grad_norm"])))
    (p1, l1, g1), (p4, l4, g4) = results
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(g4, g1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_curve_matches_pytorch_adamw_reference(tmp_path):
    """20 steps of AdamW (warmup + cosine, decay masked off norms/biases, clipping) against a plain PyTorch loop."""
    import torch

    hf = make_hf_model(tmp_path, hidden=64, heads=4, kv=2, layers=2, vocab=256, tied=False, inter=96)
    ocfg = OptimConfig(learning_rate=2e-3, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1,
                       b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0)
    steps = 20
    batches = [packed_batch(b=4, s=32, seed=i % 2) for i in range(steps)]  # repeats: the loss must fall

    # Ours, on a (2, 2, 2) mesh.
    model = load_pretrained(tmp_path)
    fns = build_step_fns(model, make_optimizer(ocfg, steps), make_mesh(MeshConfig(2, 2, 2)))
    state = fns.init(model_params(model))
    ours = []
    for b in batches:
        state, m = fns.step(state, b)
        ours.append(float(m["loss"]))

    # Reference: transformers model, torch AdamW with the same per-step learning rate.
    torch.manual_seed(0)
    decay = [p for n, p in hf.named_parameters() if not (n.endswith("bias") or "norm" in n)]
    no_decay = [p for n, p in hf.named_parameters() if n.endswith("bias") or "norm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ocfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ocfg.learning_rate, betas=(ocfg.b1, ocfg.b2), eps=ocfg.eps)
    sched = lr_schedule(ocfg, steps)
    hf.train()
    ref = []
    for i, b in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = float(sched(i))
        seg = torch.tensor(b["segment_ids"])
        # Block-diagonal causal mask for the packed documents, as a 4D additive mask.
        s = seg.shape[1]
        allowed = (seg[:, :, None] == seg[:, None, :]) & torch.tril(torch.ones(s, s, dtype=torch.bool)) & (seg[:, None, :] > 0)
        allowed |= torch.eye(s, dtype=torch.bool)  # padding rows attend to themselves (masked out of the loss)
        mask4 = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
        logits = hf(torch.tensor(b["input_ids"]), attention_mask=mask4,
                    position_ids=torch.tensor(b["positions"]).long()).logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               torch.tensor(b["targets"]).long().reshape(-1), reduction="none")
        w = torch.tensor(b["loss_mask"]).reshape(-1)
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), ocfg.clip_norm)
        opt.step()
        ref.append(loss.item())
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert ours[-1] < ours[0] - 0.1  # and it learns


def test_training_past_the_model_context_is_refused(tmp_path, monkeypatch):
    """A stage whose seq_len exceeds max_position_embeddings fails before any step, saying how to extend it."""
    from jax_distill.cli import main
    from tests.conftest import REPO_ROOT

    monkeypatch.setenv("JAX_DISTILL_DEBUG", "1")  # the exception itself, not cli.main's one-line report
    with pytest.raises(ValueError, match=r"seq_len 512 exceeds the model's max_position_embeddings 256.*rope_theta"):
        main(["train", "--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--no-progress", "train.steps=1",
              f"output_dir={tmp_path}", f"checkpoint.dir={tmp_path}/ck", "model.max_position_embeddings=256"])


@pytest.mark.parametrize("seq", [37, 64])
def test_chunked_cross_entropy_pads_lengths_that_do_not_divide(seq):
    """A length that is not a multiple of the chunk (37 = prime) is padded with masked positions: same sum and count
    as one unchunked pass, and the chunk is never shrunk (the padded program has ceil(S / chunk) chunks)."""
    from jax_distill.train.step import chunked_cross_entropy

    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, seq, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (2, seq)), jnp.int32)
    mask = jnp.asarray(rng.integers(0, 2, (2, seq)), jnp.float32)
    ref_sum, ref_n = chunked_cross_entropy(h, head, targets, mask, chunk=seq)
    got_sum, got_n = chunked_cross_entropy(h, head, targets, mask, chunk=16)
    np.testing.assert_allclose(float(got_sum), float(ref_sum), rtol=1e-5)
    assert float(got_n) == float(ref_n) == float(mask.sum())
    grad = jax.grad(lambda x: chunked_cross_entropy(x, head, targets, mask, chunk=16)[0])(h)
    ref_grad = jax.grad(lambda x: chunked_cross_entropy(x, head, targets, mask, chunk=seq)[0])(h)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-6)
    text = jax.jit(lambda x: chunked_cross_entropy(x, head, targets, mask, chunk=16)[0]).lower(h).as_text()
    assert f"tensor<{-(-seq // 16)}x2x16x16xf32>" in text  # ceil(S/16) chunks of 16 tokens, not chunks of 1
    # Unrolled (what cost estimates compile): the same values, and no loop left in the program.
    unrolled = jax.jit(lambda x: chunked_cross_entropy(x, head, targets, mask, chunk=16, unroll=True)[0])
    np.testing.assert_allclose(float(unrolled(h)), float(got_sum), rtol=1e-6)
    assert "while" in jax.jit(lambda x: chunked_cross_entropy(x, head, targets, mask, chunk=16)[0]).lower(h).compile().as_text()
    assert "while" not in unrolled.lower(h).compile().as_text()


def test_train_refuses_a_batch_the_data_shards_do_not_divide(tmp_path, capsys):
    """12 sequences over 8 FSDP shards: refused before the first step, naming the stage, the mesh and the fix (the
    compiler would fail with an IndivisibleError deep in tracing)."""
    from jax_distill.cli import main
    from tests.conftest import REPO_ROOT

    assert len(jax.devices()) == 8
    rc = main(["train", "--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--no-progress",
               f"output_dir={tmp_path}", f"checkpoint.dir={tmp_path / 'ckpt'}", "mesh.data=1", "mesh.fsdp=-1",
               "train.batch_size=12"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "stage stage1_format: each micro-batch (batch_size 12 / grad_accum 1) splits over the 8 data-parallel " \
           "shards" in err and "multiple of 8" in err
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_layers_scan_on_accelerators_and_unroll_in_cpu_steps():
    """`model.scan_layers` auto (None): scanned for TPU/GPU devices, unrolled for CPU ones; an explicit value wins.
    A CPU step built from the auto config runs unrolled and gives the scanned step's loss and gradients."""
    assert not CFG.layers_scanned("cpu") and CFG.layers_scanned("tpu") and CFG.layers_scanned("gpu")
    assert ModelConfig(scan_layers=True).layers_scanned("cpu") and not ModelConfig(scan_layers=False).layers_scanned("tpu")
    model = init_model(CFG, seed=5)
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    batch = packed_batch(b=2)
    opt = make_optimizer(OptimConfig(learning_rate=1e-3), 10)
    auto = build_step_fns(model, opt, mesh)
    scanned = build_step_fns(with_config(model, scan_layers=True), opt, mesh)
    assert nnx.merge(auto.graphdef, nnx.state(model)).config.scan_layers is False
    loops = [fns.step.lower(fns.init(model_params(model)), batch).as_text().count("stablehlo.while")
             for fns in (auto, scanned)]
    assert loops[0] == 0 and loops[1] >= 1, loops  # this config has no other loop (one loss chunk, dense attention)
    _, m_auto = auto.step(auto.init(model_params(model)), batch)
    _, m_scan = scanned.step(scanned.init(model_params(model)), batch)
    np.testing.assert_allclose(m_auto["loss"], m_scan["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_auto["grad_norm"], m_scan["grad_norm"], rtol=1e-5)
