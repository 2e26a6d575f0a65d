"""Per-step logit transforms: banned words, temperature, top-k and top-p (nucleus) filtering.

All functions are jittable, work on float32 logits [rows, vocab] and take their settings as
traced values (see `SearchKnobs`); filtered entries become -inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alexatm_jax.decoding.options import WILDCARD

# History slots before the decoder start token: they match no token id.
BEFORE_START = -1


def ban_bad_words(logits: jax.Array, history: jax.Array, prefixes: jax.Array,
                  last_ids: jax.Array) -> jax.Array:
    """`logits` with banned ids set to -inf.

    history: [rows, window] the ids preceding this step (the decoder start id included).
    prefixes: [words, window] each bad word's leading ids, right-aligned, WILDCARD-padded.
    last_ids: [words] the id each word bans when its prefix matches (negative: bans nothing).
    """
    agree = (history[:, None, :] == prefixes[None]) | (prefixes[None] == WILDCARD)
    active = jnp.all(agree, axis=-1).astype(jnp.float32)
    targets = jax.nn.one_hot(last_ids, logits.shape[-1], dtype=jnp.float32)
    return jnp.where(active @ targets > 0, -jnp.inf, logits)


def top_k_filter(logits: jax.Array, k: jax.Array) -> jax.Array:
    """Keeps the k largest logits of each row (ties with the k-th are kept too); k <= 0 = off."""
    vocab = logits.shape[-1]
    k = jnp.where((k <= 0) | (k > vocab), vocab, k)
    descending = -jnp.sort(-logits, axis=-1)
    kth = jax.lax.dynamic_index_in_dim(descending, k - 1, axis=-1, keepdims=True)
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: jax.Array) -> jax.Array:
    """Keeps the smallest set of most likely ids whose probability reaches p (at least one id)."""
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < p) | (p >= 1.0)
    threshold = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sampling_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                    top_p: jax.Array) -> jax.Array:
    """Temperature, then top-k, then top-p: the logits that `jax.random.categorical` draws from."""
    return top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
