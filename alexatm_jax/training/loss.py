"""Token-level cross-entropy statistics of teacher-forced logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_statistics(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                     z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Weighted sums over all tokens (float32 scalars), for normalising later.

    logits [batch, len, vocab] (any float dtype, computed in float32), targets [batch, len] ids,
    weights [batch, len] (1 on real target tokens, 0 on padding). Returns `loss_sum` (nats),
    `z_loss_sum` (z_loss * log(Z)^2, the PaLM auxiliary term; 0 when z_loss is 0),
    `correct_tokens` (argmax == target) and `num_target_tokens` (sum of weights).
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                        axis=-1)[..., 0]
    cross_entropy = log_normalizer - target_logits
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(cross_entropy * weights),
        "z_loss_sum": z_loss * jnp.sum(jnp.square(log_normalizer) * weights),
        "correct_tokens": jnp.sum(correct * weights),
        "num_target_tokens": jnp.sum(weights),
    }
