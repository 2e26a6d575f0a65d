"""Teacher-forced scoring: the log-probability of given target tokens under the model."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from alexatm_jax.model import AlexaTM, ModelConfig

Params = Any


@functools.partial(jax.jit, static_argnames=("config",))
def target_log_probs(
    params: Params,
    encoder_tokens: jax.Array,
    encoder_segment_ids: jax.Array,
    targets: jax.Array,
    target_mask: jax.Array,
    *,
    config: ModelConfig,
) -> jax.Array:
    """Per-token log p(target_t | input, target_<t) in nats, [batch, target_len], 0 on padding.

    encoder_tokens / encoder_segment_ids: [batch, input_len] (segment 1 = real, 0 = pad).
    targets: [batch, target_len] ids; target_mask: [batch, target_len] 1 on real target tokens
    (a left-aligned prefix of each row). The decoder input is the forced start id followed by the
    targets shifted right by one.
    """
    start = jnp.full((targets.shape[0], 1), config.decoder_start_token_id, targets.dtype)
    decoder_inputs = jnp.concatenate([start, targets[:, :-1]], axis=1)
    mask = target_mask.astype(jnp.int32)
    logits = AlexaTM(config).apply(
        {"params": params}, encoder_tokens, decoder_inputs, encoder_segment_ids, mask
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[:, :, None], axis=-1)[:, :, 0]
    return jnp.where(mask > 0, picked, 0.0)
