"""Attention masks from segment ids. Padding is segment id 0; it is never inferred from token ids.

A batch without segment ids is treated as fully real (no padding, one segment per row).
All masks are boolean with shape [batch, 1, q_len, kv_len] (True = may attend).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _pair_mask(q_segments: Array, kv_segments: Array) -> Array:
    same = q_segments[:, :, None] == kv_segments[:, None, :]
    return (same & (kv_segments[:, None, :] != 0))[:, None]


def encoder_self_mask(encoder_segment_ids: Array | None) -> Array | None:
    """Bidirectional attention within each segment; None when the batch has no segment ids."""
    if encoder_segment_ids is None:
        return None
    return _pair_mask(encoder_segment_ids, encoder_segment_ids)


def decoder_self_mask(decoder_segment_ids: Array | None, length: int) -> Array:
    """Causal attention within each segment (packed segments are contiguous within a row)."""
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, None]
    if decoder_segment_ids is None:
        return causal
    return causal & _pair_mask(decoder_segment_ids, decoder_segment_ids)


def cross_mask(
    decoder_segment_ids: Array | None, encoder_segment_ids: Array | None, decoder_length: int
) -> Array | None:
    """Each decoder token attends to the encoder tokens of its own segment."""
    if encoder_segment_ids is None:
        return None
    if decoder_segment_ids is None:
        valid = encoder_segment_ids != 0
        return jnp.broadcast_to(
            valid[:, None, None, :], (valid.shape[0], 1, decoder_length, valid.shape[1])
        )
    return _pair_mask(decoder_segment_ids, encoder_segment_ids)
