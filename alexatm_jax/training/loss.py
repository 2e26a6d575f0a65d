"""Token-level cross-entropy statistics: of teacher-forced logits, or fused with the LM head."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alexatm_jax.model.layers import constrain

LOGIT_AXES = ("activation_batch", "activation_length", "activation_vocab")


def _statistics_from_logits(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """(statistics, log-normaliser [batch, len], weights as float32) of float32 logits.

    `correct_tokens` counts targets whose logit is the row's maximum (argmax == target, ties
    aside): a max and a compare instead of XLA:CPU's slow variadic argmax reduction.
    """
    weights = weights.astype(jnp.float32)
    row_max = jnp.max(logits, axis=-1)
    log_normalizer = row_max + jnp.log(jnp.sum(jnp.exp(logits - row_max[..., None]), axis=-1))
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]
    correct = (target_logits >= row_max).astype(jnp.float32)
    stats = {
        "loss_sum": jnp.sum((log_normalizer - target_logits) * weights),
        "z_loss_sum": z_loss * jnp.sum(jnp.square(log_normalizer) * weights),
        "correct_tokens": jnp.sum(correct * weights),
        "num_target_tokens": jnp.sum(weights),
    }
    return stats, jax.lax.stop_gradient(log_normalizer), weights


def token_statistics(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> dict[str, jax.Array]:
    """Weighted sums over all tokens (float32 scalars), for normalising later.

    logits [batch, len, vocab] (any float dtype, computed in float32), targets [batch, len] ids,
    weights [batch, len] (1 on real target tokens, 0 on padding). Returns `loss_sum` (nats),
    `z_loss_sum` (z_loss * log(Z)^2, the PaLM auxiliary term; 0 when z_loss is 0),
    `correct_tokens` (argmax == target) and `num_target_tokens` (sum of weights).
    """
    stats, _, _ = _statistics_from_logits(logits.astype(jnp.float32), targets, weights, z_loss)
    return stats


def _head_logits(
    hidden: jax.Array, kernel: jax.Array, bias: jax.Array, vocab_major: bool
) -> jax.Array:
    equation = "bld,vd->blv" if vocab_major else "bld,dv->blv"
    logits = jnp.einsum(
        equation, hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32
    )
    return constrain(logits + bias.astype(jnp.float32), LOGIT_AXES)


def _column_sum(x: jax.Array) -> jax.Array:
    """Float32 sum of `x` over all but its last axis, as a vector-matrix product with ones.

    XLA:CPU reduces the token axis of a [tokens, vocab] array many times slower than it runs
    this product (which reads the array once, row by row). HIGHEST precision keeps TPUs from
    rounding the float32 operand to bfloat16 passes.
    """
    rows = x.reshape(-1, x.shape[-1])
    return jnp.matmul(
        jnp.ones((rows.shape[0],), rows.dtype),
        rows,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused_head(hidden, kernel, bias, targets, weights, z_loss, vocab_major):
    logits = _head_logits(hidden, kernel, bias, vocab_major)
    stats, _, _ = _statistics_from_logits(logits, targets, weights, z_loss)
    return stats


def _fused_head_fwd(hidden, kernel, bias, targets, weights, z_loss, vocab_major):
    logits = _head_logits(hidden, kernel, bias, vocab_major)
    stats, log_normalizer, weights32 = _statistics_from_logits(logits, targets, weights, z_loss)
    # d(loss_sum + z_loss_sum) / d logits = w * (softmax * (1 + 2 z logZ) - onehot(target)),
    # formed here in one pass over the logits, which are not kept for the backward pass.
    scale = weights32 * (1.0 + 2.0 * z_loss * log_normalizer) if z_loss else weights32
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    probs = jnp.exp(logits - log_normalizer[..., None])
    d_logits = probs * scale[..., None] - jnp.where(
        vocab_ids == targets[..., None].astype(jnp.int32), weights32[..., None], 0.0
    )
    d_logits = constrain(d_logits, LOGIT_AXES).astype(hidden.dtype)
    k = kernel.astype(hidden.dtype)
    if vocab_major:
        d_hidden = jnp.einsum("blv,vd->bld", d_logits, k)
        # [embed, vocab] then transposed: XLA:CPU would otherwise transpose the (much larger)
        # [tokens, vocab] d_logits for the product.
        d_kernel = jnp.einsum("bld,blv->dv", hidden, d_logits, preferred_element_type=jnp.float32).T
    else:
        d_hidden = jnp.einsum("blv,dv->bld", d_logits, k)
        d_kernel = jnp.einsum("bld,blv->dv", hidden, d_logits, preferred_element_type=jnp.float32)
    d_bias = _column_sum(d_logits)
    grads = (
        d_hidden.astype(hidden.dtype),
        d_kernel.astype(kernel.dtype),
        d_bias.astype(bias.dtype),
    )
    return stats, grads


def _fused_head_bwd(z_loss, vocab_major, grads, cotangents):
    del z_loss, vocab_major
    # Only the objective loss_sum + z_loss_sum is differentiable (see fused_head_statistics);
    # both terms always carry the same cotangent in the train step.
    g = cotangents["loss_sum"]
    d_hidden, d_kernel, d_bias = grads
    return (
        d_hidden * g.astype(d_hidden.dtype),
        d_kernel * g.astype(d_kernel.dtype),
        d_bias * g.astype(d_bias.dtype),
        None,
        None,
    )


_fused_head.defvjp(_fused_head_fwd, _fused_head_bwd)


def fused_head_statistics(
    hidden: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
    *,
    vocab_major: bool = False,
) -> dict[str, jax.Array]:
    """`token_statistics` of the LM head's logits, fused with the head for training.

    hidden [batch, len, embed] (compute dtype), kernel [embed, vocab] or, with
    `vocab_major=True`, [vocab, embed] (a tied embedding table as it is), bias [vocab]. The
    statistics equal `token_statistics(hidden . kernel + bias, ...)`. Under `jax.grad` the
    gradients of the head and of `hidden` are computed in the forward pass, from one pass over
    the float32 logits (softmax minus one-hot, weighted), so neither the logits nor a softmax
    recomputation is kept for the backward pass and no transposed copy of a tied table is made.

    Only the objective `loss_sum + z_loss_sum` is differentiable: the backward pass takes the
    cotangent of `loss_sum` as the cotangent of both terms (the train step's case); the other
    statistics are for logging.
    """
    stats = _fused_head(hidden, kernel, bias, targets, weights, float(z_loss), bool(vocab_major))
    return stats
