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


def ban_bad_words(
    logits: jax.Array, history: jax.Array, prefixes: jax.Array, last_ids: jax.Array
) -> jax.Array:
    """`logits` with banned ids set to -inf.

    history: [rows, window] the ids preceding this step (the decoder start id included).
    prefixes: [words, window] each bad word's leading ids, right-aligned, WILDCARD-padded.
    last_ids: [words] the id each word bans when its prefix matches (negative: bans nothing).
    The banned ids are scattered into a [rows, vocab] mask: O(rows x words) work besides the one
    pass over the logits, however many words there are.
    """
    rows, vocab = logits.shape
    agree = (history[:, None, :] == prefixes[None]) | (prefixes[None] == WILDCARD)
    active = jnp.all(agree, axis=-1) & (last_ids[None] >= 0)
    # Inactive words point one past the vocabulary and are dropped by the scatter.
    banned = jnp.where(active, last_ids[None], vocab)
    row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], banned.shape)
    mask = jnp.zeros((rows, vocab), jnp.bool_).at[row_ids, banned].set(True, mode="drop")
    return jnp.where(mask, -jnp.inf, logits)


def first_argmax(logits: jax.Array) -> jax.Array:
    """int32 [rows]: `jnp.argmax(logits, axis=-1)` (first maximum; first NaN if any), computed as a
    max and a masked min over the vocabulary, faster than XLA:CPU's variadic argmax reduce
    (docs/benchmarks.md#measurements-behind-code-choices)."""
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    hits = (logits == top) | jnp.isnan(logits)
    return jnp.min(jnp.where(hits, ids, vocab), axis=-1)


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[row, tokens[row]] for float32 logits [rows, vocab], without
    materialising the full log-softmax."""
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


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


def sampling_logits(
    logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Temperature, then top-k, then top-p: the logits that `jax.random.categorical` draws from."""
    return top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
