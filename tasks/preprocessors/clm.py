"""Causal-LM examples: one document split at a random point, `[CLM]` first in the encoder input.

For a document of m >= 2 tokens: s = round(u * m), u ~ U(0.2, 0.8), clipped to [1, m - 1].
inputs  = [CLM] + the last (L_in - 2) tokens of document[:s] + [EOS]  (the tokens nearest the
          split are kept when the prefix is too long)
targets = document[s : s + L_t - 1] + [EOS]
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tasks import counters as names
from tasks.counters import ScopedCounters, record_key
from tasks.preprocessors.seeds import example_seed


def split_point(num_tokens: tf.Tensor, seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """int32 split index s in [1, num_tokens - 1], s = round(u * num_tokens), u ~ U(low, high)."""
    u = tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high, dtype=tf.float32)
    s = tf.cast(tf.round(u * tf.cast(num_tokens, tf.float32)), tf.int32)
    return tf.clip_by_value(s, 1, num_tokens - 1)


def causal_lm(
    ds: tf.data.Dataset,
    *,
    sequence_length: Mapping[str, int] | None,
    clm_id: int,
    eos_id: int,
    salt: int,
    counters: ScopedCounters,
    info: Mapping[str, str],
    low: float = 0.2,
    high: float = 0.8,
) -> tf.data.Dataset:
    """{"tokens": one document, "rng"} -> {"inputs", "targets", "noise_mask",
    "clm_document_length", "clm_split_point"} plus the string features of `info`; documents under
    2 tokens are dropped (counted).

    noise_mask is all zeros (len(targets)); clm_document_length is m and clm_split_point is s.
    Without `sequence_length` nothing is truncated. Example i of the stream is seeded by
    (rng, salt, i).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got {low}, {high}")
    max_prefix = sequence_length["inputs"] - 2 if sequence_length else None
    max_continuation = sequence_length["targets"] - 1 if sequence_length else None
    if (max_prefix is not None and max_prefix < 1) or (
        max_continuation is not None and max_continuation < 1
    ):
        raise ValueError(f"CLM needs inputs >= 3 and targets >= 2 tokens, got {sequence_length}")
    counters.declare(names.CLM_TOO_SHORT)

    @tf.autograph.experimental.do_not_convert
    def long_enough(ex):
        short = tf.size(ex["tokens"]) < 2
        key = tf.cond(short, lambda: record_key(ex["tokens"]), lambda: tf.constant(0, tf.int64))
        with tf.control_dependencies([counters.add(names.CLM_TOO_SHORT, short, key)]):
            return tf.logical_not(tf.identity(short))

    @tf.autograph.experimental.do_not_convert
    def split(index, ex):
        tokens = ex["tokens"]
        m = tf.size(tokens)
        s = split_point(m, example_seed(ex["rng"], salt, index), low, high)
        prefix, continuation = tokens[:s], tokens[s:]
        if max_prefix is not None:
            prefix = prefix[-max_prefix:]
            continuation = continuation[:max_continuation]
        targets = tf.concat([continuation, [eos_id]], axis=0)
        return {
            "inputs": tf.concat([[clm_id], prefix, [eos_id]], axis=0),
            "targets": targets,
            "noise_mask": tf.zeros_like(targets),
            "clm_document_length": m,
            "clm_split_point": s,
            **{key: tf.constant(value) for key, value in info.items()},
        }

    return ds.filter(long_enough).enumerate().map(split, num_parallel_calls=tf.data.AUTOTUNE)
