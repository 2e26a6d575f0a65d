"""The model calls a decode loop makes: encode once, then one cached decoder step at a time.

The first `decoder_step` (no cache yet) creates the `cache` collection: a self-attention K/V
buffer of `max_decode_length` steps per layer and the cross-attention K/V projected once from the
encoder states. Later steps read the cross K/V from the cache and append one self-attention step.
With `scan_layers` every cache leaf carries a leading layers axis, so the batch axis is 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alexatm_jax.model import AlexaTM, ModelConfig
from alexatm_jax.model.transformer import project_to_vocab

Params = Any
Cache = Any
SELF_ATTENTION_CACHE_LEAVES = ("cached_key", "cached_value")
CROSS_ATTENTION_CACHE_LEAVES = ("cross_key", "cross_value")


def encode(
    config: ModelConfig, params: Params, tokens: jax.Array, segment_ids: jax.Array
) -> jax.Array:
    """Encoder states [batch, input_len, d_model]; padding is where `segment_ids` == 0."""
    return AlexaTM(config).apply({"params": params}, tokens, segment_ids, method=AlexaTM.encode)


class OutputHead(NamedTuple):
    """The LM head, materialised outside the decode loop: kernel [embed, vocab], bias [vocab]."""

    kernel: jax.Array
    bias: jax.Array


def output_head(config: ModelConfig, params: Params) -> OutputHead:
    """The LM head of `params` (the transposed embedding when embeddings are tied)."""
    return OutputHead(*AlexaTM(config).apply({"params": params}, method=AlexaTM.output_head))


def decoder_step(
    config: ModelConfig,
    params: Params,
    head: OutputHead,
    cache: Cache | None,
    encoded: jax.Array,
    encoder_segment_ids: jax.Array,
    tokens: jax.Array,
    step: jax.Array,
    max_decode_length: int,
) -> tuple[jax.Array, Cache]:
    """Float32 logits [batch, vocab] for decoder inputs `tokens` [batch] at position `step`.

    `head` comes from `output_head`, computed outside the loop. Returns the updated cache; pass
    `cache=None` on the first step (it creates the cache).
    """
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    positions = jnp.full((tokens.shape[0], 1), step, jnp.int32)
    hidden, mutated = AlexaTM(config).apply(
        variables,
        encoded,
        encoder_segment_ids,
        tokens[:, None],
        None,
        positions,
        decode=True,
        max_decode_length=max_decode_length,
        mutable=["cache"],
        method=AlexaTM.decode_hidden,
    )
    return project_to_vocab(hidden, head.kernel, head.bias)[:, 0], mutated["cache"]


def cache_batch_axis(config: ModelConfig) -> int:
    """The batch axis of the cache's K/V leaves: 1 under scan_layers (layers lead), else 0."""
    return 1 if config.scan_layers else 0


def repeat_cache_rows(cache: Cache, times: int, config: ModelConfig) -> Cache:
    """The cache with every K/V row repeated `times` times in place (row b -> rows b*times ...),
    e.g. to start `times` beams per input from one first decoder step."""
    axis = cache_batch_axis(config)

    def repeat(path, leaf):
        name = getattr(path[-1], "key", None)
        if name in SELF_ATTENTION_CACHE_LEAVES + CROSS_ATTENTION_CACHE_LEAVES:
            return jnp.repeat(leaf, times, axis=axis)
        return leaf

    return jax.tree_util.tree_map_with_path(repeat, cache)


def reorder_cache(cache: Cache, rows: jax.Array, config: ModelConfig) -> Cache:
    """The cache with its self-attention K/V rows gathered by `rows` [batch] along the batch axis.

    The cross-attention K/V are left alone: beam search only permutes rows among the beams of one
    input, and those beams share identical cross K/V (saves a gather of [batch, input_len, d_model]
    per layer and step). The cache index is a scalar per layer and needs no reordering.
    """
    axis = cache_batch_axis(config)

    def gather(path, leaf):
        name = getattr(path[-1], "key", None)
        if name in SELF_ATTENTION_CACHE_LEAVES:
            return jnp.take(leaf, rows, axis=axis)
        return leaf

    return jax.tree_util.tree_map_with_path(gather, cache)
