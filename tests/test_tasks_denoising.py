"""Span deletion: exact rate, span lengths, placement, and the documented rule values."""

import numpy as np
import pytest
import tensorflow as tf

from tasks.inspection import rule_mean_span_length, runs_of_ones
from tasks.preprocessors.denoising import deletion_mask, expected_draw_mean, span_lengths

# Documented in docs/data.md#the-objectives-exactly: pooled mean deleted-span length of the rule.
DOCUMENTED_MEAN_SPAN = {128: 2.93, 1024: 3.13}


def _masks(count: int, body: int, seed: int) -> np.ndarray:
    ds = tf.data.Dataset.range(count).map(
        lambda i: tf.cast(
            deletion_mask(body, tf.stack([i, tf.constant(seed, tf.int64)]), 0.15, 3.0), tf.int32
        )
    )
    return np.concatenate(list(ds.batch(1000).as_numpy_iterator()))


@pytest.fixture(scope="module")
def masks_128():
    return _masks(6000, 127, seed=11)  # body 127 + EOS = 128 target tokens


def test_deletion_rate_is_15_percent_of_targets(masks_128):
    rate = masks_128.sum() / (masks_128.shape[0] * 128)
    assert abs(rate - 0.15) < 0.005
    per_sequence = masks_128.sum(axis=1)
    assert set(per_sequence) <= {19, 20}  # floor(0.15 * 128 + u): 19.2 -> 19 or 20


def test_mean_span_length_matches_rule(masks_128):
    spans = [length for row in masks_128 for _, length in runs_of_ones(row)]
    mean = float(np.mean(spans))
    assert abs(mean - DOCUMENTED_MEAN_SPAN[128]) < 0.15
    assert abs(mean - rule_mean_span_length([128], 0.15, 3.0)) < 0.05


def test_documented_values_follow_from_the_rule():
    for length, documented in DOCUMENTED_MEAN_SPAN.items():
        assert abs(rule_mean_span_length([length], 0.15, 3.0, draws=4000) - documented) < 0.02
    assert abs(expected_draw_mean(3.0) - 3.157) < 1e-3


def test_spans_never_touch_and_short_bodies_keep_a_token():
    masks = _masks(500, 30, seed=3)
    for row in masks:
        runs = runs_of_ones(row)
        for (start, length), (next_start, _) in zip(runs, runs[1:], strict=False):
            assert next_start > start + length  # at least one kept token between spans
    for body in (1, 2, 3):
        short = _masks(200, body, seed=5)
        assert (short.sum(axis=1) <= body - 1).all() if body > 1 else (short.sum() == 0)


def test_zero_length_draws_are_discarded():
    lengths = []
    for i in range(300):
        lengths += (
            span_lengths(tf.constant(400), tf.constant([i, 1], tf.int64), 3.0).numpy().tolist()
        )
    lengths = np.array(lengths)
    assert lengths.min() >= 1
    assert abs(lengths.mean() - expected_draw_mean(3.0)) < 0.1  # truncation touches 1 in ~127


def test_same_seed_same_mask_and_seeds_differ():
    a = deletion_mask(200, tf.constant([1, 2], tf.int64), 0.15, 3.0).numpy()
    b = deletion_mask(200, tf.constant([1, 2], tf.int64), 0.15, 3.0).numpy()
    c = deletion_mask(200, tf.constant([1, 3], tf.int64), 0.15, 3.0).numpy()
    assert (a == b).all() and not (a == c).all()
