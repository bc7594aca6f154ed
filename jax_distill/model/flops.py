"""Analytic model FLOPs (the convention behind every MFU figure we report).

Per token, training = 3 x forward (forward + backward, which costs twice the forward), and
forward = 2 x (matmul parameters) + attention scores and values.
- Matmul parameters: every decoder-layer weight (q, k, v, o, gate, up, down) plus the LM head (D x V, counted even
  when tied to the embedding, since the head matmul runs); the embedding lookup, norms and biases are not matmuls.
- Attention: 2 x 2 x layers x seq x heads x head_dim per token (QK^T and AV), halved for causal masking (we count
  only the unmasked half, as MaxText does). Hence 6·N + 6·L·S·H·hd (causal).
"""

from __future__ import annotations

from jax_distill.model.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    c = cfg.resolve() if not cfg.is_resolved else cfg
    d, hd = c.hidden_size, c.head_dim
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size
    return c.num_hidden_layers * per_layer + d * c.vocab_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    c = cfg.resolve() if not cfg.is_resolved else cfg
    attn = 4 * c.num_hidden_layers * seq_len * c.num_attention_heads * c.head_dim * (0.5 if causal else 1.0)
    return 2 * matmul_params(c) + attn


def train_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Model FLOPs per trained token: 6·N (N = matmul parameters incl. LM head) + 3 x causal attention."""
    return 3 * forward_flops_per_token(cfg, seq_len, causal)
