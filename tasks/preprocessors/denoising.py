"""Denoising by span deletion (no mask token): the encoder sees the shortened sequence and the
decoder target is the whole original sequence.

Rule, for a packed body of n tokens whose target is body + EOS (T = n + 1 tokens):
  * k = floor(rate * T + u), u ~ U[0, 1): stochastic rounding, so E[k] = rate * T exactly and
    short sequences keep the aggregate rate; k is capped at n - 1 (one body token always stays).
    EOS is never deleted, so the deletion rate measured against the target length is `rate`.
  * span lengths are i.i.d. Poisson(lambda) draws, zero draws discarded (zero-truncated
    Poisson, mean lambda / (1 - exp(-lambda)) = 3.157 for lambda = 3), taken until they sum to at
    least k; the last span is shortened so that exactly k tokens are deleted.
  * spans are placed uniformly at random with at least one kept token between two spans (they
    never merge), anywhere in the body: they may cross [DOC] separators and delete them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tensorflow as tf

from tasks.preprocessors.seeds import example_seed


def expected_draw_mean(poisson_lambda: float) -> float:
    """Mean of a zero-truncated Poisson(lambda) span length, in tokens."""
    return poisson_lambda / (1.0 - math.exp(-poisson_lambda))


def span_lengths(num_deleted: tf.Tensor, seed: tf.Tensor, poisson_lambda: float) -> tf.Tensor:
    """int32 [num_spans] zero-truncated Poisson span lengths summing to `num_deleted` (>= 0)."""
    # 2k + 8 draws hold at least k non-zero ones except with astronomically small probability;
    # in that case fewer than k tokens are deleted, never more.
    draws = tf.random.stateless_poisson(
        [2 * num_deleted + 8], seed=seed, lam=poisson_lambda, dtype=tf.int32
    )
    draws = tf.boolean_mask(draws, draws > 0)
    before = tf.cumsum(draws, exclusive=True)
    lengths = tf.minimum(draws, tf.maximum(num_deleted - before, 0))
    return tf.boolean_mask(lengths, lengths > 0)


def deletion_mask(
    num_tokens: tf.Tensor, seed: tf.Tensor, rate: float, poisson_lambda: float
) -> tf.Tensor:
    """bool [num_tokens]: True where a token of the body is deleted (see the module rule).

    `num_tokens` is the body length n >= 1; the rate is taken against n + 1 (the target with EOS).
    """
    round_seed, length_seed, place_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    u = tf.random.stateless_uniform([], seed=round_seed, dtype=tf.float32)
    target_length = tf.cast(num_tokens + 1, tf.float32)
    rate = tf.cast(rate, tf.float32)
    k = tf.cast(tf.floor(rate * target_length + u), tf.int32)
    k = tf.clip_by_value(k, 0, tf.maximum(num_tokens - 1, 0))
    lengths = span_lengths(k, length_seed, poisson_lambda)
    kept = num_tokens - tf.reduce_sum(lengths)
    # Each span sits in a distinct gap between kept tokens (kept + 1 gaps), so spans never touch.
    num_spans = tf.minimum(tf.size(lengths), kept + 1)
    lengths = lengths[:num_spans]
    order = tf.argsort(tf.random.stateless_uniform([kept + 1], seed=place_seed))
    gaps = tf.sort(order[:num_spans])
    starts = gaps + tf.cumsum(lengths, exclusive=True)
    edges = tf.concat([starts, starts + lengths], axis=0)
    steps = tf.concat([tf.ones_like(starts), -tf.ones_like(starts)], axis=0)
    delta = tf.scatter_nd(edges[:, None], steps, [num_tokens + 1])
    return tf.cumsum(delta)[:num_tokens] > 0


# Traced once per process and shared by every task's map function (tracing is the slow part
# of building a 24-48 task mixture).
_deletion_mask = tf.function(
    deletion_mask,
    autograph=False,
    input_signature=[
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.float32),
    ],
)


def denoise(
    ds: tf.data.Dataset,
    *,
    eos_id: int,
    salt: int,
    info: Mapping[str, str],
    rate: float = 0.15,
    poisson_lambda: float = 3.0,
) -> tf.data.Dataset:
    """{"tokens": packed body, "rng"} -> {"inputs", "targets", "noise_mask",
    "clm_document_length", "clm_split_point"} plus the string features of `info`.

    targets = body + [EOS]; inputs = body without the deleted tokens + [EOS] (a subsequence of
    targets); noise_mask = int32 [len(targets)], 1 where deleted; the clm_* fields are 0 (they
    exist so denoising and CLM examples share one structure). Example i of the stream is seeded
    by (rng, salt, i).
    """
    if not 0.0 < rate < 1.0 or poisson_lambda <= 0:
        raise ValueError(f"need 0 < rate < 1 and lambda > 0, got {rate}, {poisson_lambda}")

    @tf.autograph.experimental.do_not_convert
    def corrupt(index, ex):
        body = ex["tokens"]
        seed = example_seed(ex["rng"], salt, index)
        mask = _deletion_mask(tf.size(body), seed, rate, poisson_lambda)
        eos = tf.constant([eos_id], tf.int32)
        zero = tf.constant(0, tf.int32)
        return {
            "inputs": tf.concat([tf.boolean_mask(body, tf.logical_not(mask)), eos], axis=0),
            "targets": tf.concat([body, eos], axis=0),
            "noise_mask": tf.concat([tf.cast(mask, tf.int32), [zero]], axis=0),
            "clm_document_length": zero,
            "clm_split_point": zero,
            **{key: tf.constant(value) for key, value in info.items()},
        }

    return ds.enumerate().map(corrupt, num_parallel_calls=tf.data.AUTOTUNE)
