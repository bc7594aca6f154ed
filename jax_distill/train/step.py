"""The sharded, jitted SFT step: chunked cross-entropy over response tokens, gradient accumulation, AdamW.

Train state is a plain dict pytree — ``{"params", "opt_state", "step"}`` — so that Orbax, optax and jit all see
the same structure. Loss normalisation: the loss of a step is the sum of token cross-entropies over every
``loss_mask`` token of the *global* batch (all micro-batches, all hosts) divided by the number of such tokens; so
k accumulated micro-batches give exactly the gradient of one batch k times larger.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_distill.model.config import ModelConfig
from jax_distill.model.qwen2 import Qwen2ForCausalLM, with_config
from jax_distill.sharding import Rules, batch_sharding, constrain, current_rules, param_shardings, traced_on

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


class StepFns(NamedTuple):
    """Compiled entry points for one (model, optimizer, mesh, batch shape)."""

    init: Callable  # (params) -> state
    step: Callable  # (state, batch) -> (state, metrics)
    eval_loss: Callable  # (params, batch) -> {"loss_sum", "tokens"}
    state_shardings: Any
    batch_sharding: NamedSharding
    graphdef: Any


def chunked_cross_entropy(h: jax.Array, head: jax.Array, targets: jax.Array, mask: jax.Array,
                          chunk: int = 2048, unroll: bool = False) -> tuple[jax.Array, jax.Array]:
    """Sum of masked token cross-entropies and the token count, never holding all [B, S, V] logits.

    h [B, S, D] compute dtype; head [D, V]; targets int32 [B, S]; mask float32 [B, S]. Logits and the log-softmax are
    float32. A sequence longer than ``chunk`` is processed in chunks under `jax.checkpoint`, so the backward pass
    recomputes each chunk's logits instead of storing them (a 16k x 152k fp32 logit tensor would be ~10 GB per
    sequence). A length that is not a multiple of ``chunk`` is padded up to one with masked positions (never a
    smaller chunk: a prime length would otherwise mean chunks of one token). ``unroll``: the chunks as straight-line
    code instead of a loop (same values; for compiler cost estimates, which count a loop body once).
    """
    b, s, d = h.shape
    c = min(chunk, s)
    if s % c:
        pad = c - s % c
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
        s += pad

    def one(hc, tc, mc):
        hc = constrain(hc, ("batch", None, "act_embed"))
        bc, sc = tc.shape
        # Tokens flattened to one axis: the head's weight gradient is then a single plain matmul (see qwen2._proj).
        logits = jnp.einsum("nd,dv->nv", hc.reshape(bc * sc, d), head, preferred_element_type=jnp.float32)
        logits = constrain(logits.reshape(bc, sc, -1), ("batch", None, "act_vocab"))
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return jnp.sum((lse - tgt) * mc)

    n = s // c
    if n == 1:  # one chunk: its logits are needed by the backward pass right away, recomputing them buys nothing
        return one(h, targets, mask), jnp.sum(mask)
    hs = h.reshape(b, n, c, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, c).swapaxes(0, 1)
    ms = mask.reshape(b, n, c).swapaxes(0, 1)
    if unroll:
        losses = jnp.stack([jax.checkpoint(one)(hs[i], ts[i], ms[i]) for i in range(n)])
    else:
        losses = jax.lax.map(jax.checkpoint(lambda a: one(*a)), (hs, ts, ms))
    return jnp.sum(losses), jnp.sum(mask)


def loss_terms(graphdef: Any, params: Any, batch: dict[str, jax.Array], chunk: int = 2048, unroll: bool = False):
    """(sum of masked CE, number of loss tokens) for one micro-batch of [B, S] arrays."""
    model = nnx.merge(graphdef, params)
    h, _ = model.hidden_states(batch["input_ids"], batch["positions"], batch["segment_ids"])
    return chunked_cross_entropy(h, model.head_weight(), batch["targets"], batch["loss_mask"].astype(jnp.float32),
                                 chunk, unroll)


def make_train_step(graphdef: Any, optimizer: optax.GradientTransformation, grad_accum: int = 1,
                    loss_chunk: int = 2048, unroll_loss: bool = False):
    """The pure step function ``(state, batch) -> (state, metrics)``; batch arrays are [global_batch, S]."""

    def grads_of(params, micro):
        (loss_sum, tokens), grads = jax.value_and_grad(
            lambda p: loss_terms(graphdef, p, micro, loss_chunk, unroll_loss), has_aux=True)(params)
        return loss_sum, tokens, grads

    def step(state, batch):
        params = state["params"]
        if grad_accum == 1:
            loss_sum, tokens, grads = grads_of(params, batch)
        else:
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

            def acc(carry, mb):
                l, t, g = grads_of(params, mb)
                return (carry[0] + l, carry[1] + t, jax.tree.map(jnp.add, carry[2], g)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss_sum, tokens, grads), _ = jax.lax.scan(acc, (0.0, 0.0, zeros), micro)
        denom = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": optax.tree.norm(grads),
            "loss_tokens": tokens,
        }
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return step


def build_step_fns(model: Qwen2ForCausalLM | Any, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                   grad_accum: int = 1, loss_chunk: int = 2048, donate: bool = True,
                   rules: Rules | None = None, unroll_loss: bool = False) -> StepFns:
    """Jit the init/step/eval functions with explicit shardings for ``mesh``.

    ``model`` may be abstract (``nnx.eval_shape``): nothing is allocated here, so the same call serves AOT planning.
    ``rules``: the logical-axis rules (default: the enclosing ``nnx.logical_axis_rules``, else sharding.DEFAULT_RULES).
    Params are sharded by them; optimizer moments follow their parameter; the batch by the ``batch`` rule; metrics
    are replicated.
    """
    rules = current_rules() if rules is None else rules
    if model.config.scan_layers is None:  # auto: decided by the devices the step runs on, not the host's backend
        model = with_config(model, scan_layers=model.config.layers_scanned(mesh.devices.flat[0].platform))
    graphdef, _ = nnx.split(model)
    p_shard = param_shardings(model, mesh, rules)
    abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                   nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    replicated = NamedSharding(mesh, P())

    def init(params):
        return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

    # Optimizer moments are sharded like their parameter; counters and other scalars are replicated.
    state_shapes = jax.eval_shape(init, abstract_params)
    opt_shard = optax.tree_utils.tree_map_params(
        optimizer, lambda _, s: s, state_shapes["opt_state"], p_shard,
        transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, NamedSharding))
    state_shardings = {"params": p_shard, "opt_state": opt_shard, "step": replicated}
    b_shard = batch_sharding(mesh, rules=rules)
    batch_shardings = {k: b_shard for k in BATCH_KEYS}
    step_fn = make_train_step(graphdef, optimizer, grad_accum, loss_chunk, unroll_loss)
    jit_init = jax.jit(init, in_shardings=(p_shard,), out_shardings=state_shardings)
    jit_step = jax.jit(traced_on(step_fn, mesh, rules), in_shardings=(state_shardings, batch_shardings),
                       out_shardings=(state_shardings, replicated), donate_argnums=(0,) if donate else ())

    def eval_fn(params, batch):
        loss_sum, tokens = loss_terms(graphdef, params, batch, loss_chunk)
        return {"loss_sum": loss_sum, "tokens": tokens}

    jit_eval = jax.jit(traced_on(eval_fn, mesh, rules), in_shardings=(p_shard, batch_shardings), out_shardings=replicated)
    return StepFns(jit_init, jit_step, jit_eval, state_shardings, b_shard, graphdef)


def abstract_train_step(model_cfg: ModelConfig, mesh: Mesh, *, batch_size: int, seq_len: int,
                        optimizer: optax.GradientTransformation | None = None, grad_accum: int = 1,
                        loss_chunk: int = 2048, unroll_loss: bool = False):
    """(jitted step, abstract args) for AOT compilation on any mesh (e.g. TPU topology devices); allocates nothing.

    ``jitted.lower(*args).compile()`` is the real training step of ``model_cfg`` at [batch_size, seq_len].
    ``unroll_loss``: the loss's chunk loop unrolled (for cost estimates; see plan/step_time.py).
    """
    from jax_distill.model.qwen2 import init_model

    model = nnx.eval_shape(lambda: init_model(model_cfg))
    optimizer = optimizer or optax.adamw(1e-5)
    fns = build_step_fns(model, optimizer, mesh, grad_accum=grad_accum, loss_chunk=loss_chunk, unroll_loss=unroll_loss)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), model_params(model))
    state = jax.eval_shape(fns.init, params)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, fns.state_shardings)
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32 if k == "loss_mask" else jnp.int32,
                                     sharding=fns.batch_sharding) for k in BATCH_KEYS}
    return fns.step, (state, batch)


def model_params(model: Qwen2ForCausalLM) -> Any:
    """The model's parameters as a plain nested dict of arrays (the ``params`` entry of the train state)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
