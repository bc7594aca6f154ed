"""Tiny random transformers Qwen2 models, built locally (no hub), as the numerical reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_hf_model(tmp: Path, *, hidden=48, inter=100, layers=2, heads=6, kv=3, vocab=300, tied=True,
                  theta=1e6, head_dim=None, seed=0, dtype="float32"):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied, rope_theta=theta,
        max_position_embeddings=512, **({"head_dim": head_dim} if head_dim else {}),
    )
    model = Qwen2ForCausalLM(cfg).eval()
    # Random (not zero) biases and norms so that every tensor's layout is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(tmp, safe_serialization=True)
    return model


def hf_logits(model, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        kwargs = {}
        if positions is not None:
            kwargs["position_ids"] = torch.tensor(positions)
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()
