"""Unpacked batches (`train.pack=False`) mask their padding: segment ids and positions from the
data layer, the same loss as the packed path on the same single-example rows, and a refusal of
batches the model cannot mask."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from data_fixtures import vocab_path, write_corpus
from tiny_config import tiny_model_config

import tasks
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.training import (
    OptimizerConfig,
    TrainConfig,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from tasks.dataset import unpacked_model_features

LENGTHS = {"inputs": 10, "targets": 8}
START_ID = 3
TINY = tiny_model_config(max_positions=16)
# Lengths up to the limits (a SeqIO task has trimmed its examples before conversion).
EXAMPLES = [
    {"inputs": list(range(5, 5 + n_in)), "targets": list(range(40, 40 + n_t))}
    for n_in, n_t in ((3, 2), (10, 8), (1, 5), (7, 1), (9, 8), (4, 6))
]


def _dataset(examples: list[dict]) -> tf.data.Dataset:
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )


def _rows(ds: tf.data.Dataset) -> dict[str, np.ndarray]:
    rows = list(ds.as_numpy_iterator())
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


@pytest.fixture(scope="module")
def unpacked() -> dict[str, np.ndarray]:
    return _rows(unpacked_model_features(_dataset(EXAMPLES), LENGTHS, START_ID))


@pytest.fixture(scope="module")
def packed_one_per_row() -> dict[str, np.ndarray]:
    """Each example packed on its own: the packed converter's features for a one-example row."""
    converter = seqio.EncDecFeatureConverter(pack=True, bos_id=START_ID)
    rows = [_rows(converter(_dataset([ex]), task_feature_lengths=LENGTHS)) for ex in EXAMPLES]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def test_tokens_are_seqios_unpacked_features(unpacked):
    converter = seqio.EncDecFeatureConverter(pack=False, bos_id=START_ID)
    seqio_rows = _rows(converter(_dataset(EXAMPLES), task_feature_lengths=LENGTHS))
    assert not any(name.endswith("_segment_ids") for name in seqio_rows)  # why this exists
    real = unpacked["decoder_segment_ids"] == 1
    for name, values in seqio_rows.items():
        ours = unpacked[name]
        if name == "decoder_input_tokens":  # padding holds the packed converter's values
            ours, values = ours[real], values[real]
        np.testing.assert_array_equal(ours, values, err_msg=name)


def test_segment_ids_and_positions_mark_the_real_tokens(unpacked):
    for side, key, limit in (("encoder", "inputs", 10), ("decoder", "targets", 8)):
        lengths = np.array([min(len(ex[key]), limit) for ex in EXAMPLES])
        real = np.arange(limit)[None] < lengths[:, None]
        np.testing.assert_array_equal(unpacked[f"{side}_segment_ids"], real.astype(np.int32))
        np.testing.assert_array_equal(
            unpacked[f"{side}_positions"], np.where(real, np.arange(limit)[None], 0)
        )


def test_unpacked_rows_equal_packed_rows_of_one_example(unpacked, packed_one_per_row):
    assert set(unpacked) == set(packed_one_per_row)
    for name, values in packed_one_per_row.items():
        np.testing.assert_array_equal(unpacked[name], values, err_msg=name)


@pytest.fixture(scope="module")
def steps():
    """(partitioner, params, eval step, train step) of the tiny model."""
    partitioner = Partitioner(MeshConfig(), "fsdp")
    optimizer_config = OptimizerConfig(learning_rate=1e-3, end_learning_rate=1e-3)
    state = create_train_state(
        TINY, make_optimizer(optimizer_config, 10), partitioner, jax.random.key(0)
    )
    config = TrainConfig(
        model_config=TINY, train_steps=10, batch_size=6, optimizer_config=optimizer_config
    )
    return (
        partitioner,
        state,
        make_eval_step(TINY, partitioner),
        make_train_step(config, partitioner),
    )


def test_unpacked_loss_equals_the_packed_loss_and_padding_is_masked(
    steps, unpacked, packed_one_per_row
):
    partitioner, state, eval_step, _ = steps
    loss = lambda batch: float(eval_step(state.params, partitioner.shard_batch(batch))["loss"])
    assert loss(unpacked) == loss(packed_one_per_row)
    # What SeqIO's unpacked converter gives the eval step: padding attended as tokens.
    unmasked = {k: v for k, v in unpacked.items() if not k.endswith(("_segment_ids", "_positions"))}
    with pytest.raises(KeyError, match="cannot tell padding from tokens"):
        eval_step(state.params, partitioner.shard_batch(unmasked))
    with_ones = dict(
        unmasked,
        encoder_segment_ids=np.ones_like(unpacked["encoder_segment_ids"]),
        decoder_segment_ids=np.ones_like(unpacked["decoder_segment_ids"]),
    )
    assert abs(loss(with_ones) - loss(unpacked)) > 1e-4  # padding changes the loss


def test_the_train_step_refuses_a_batch_without_segment_ids(steps, unpacked):
    partitioner, state, _, train_step = steps
    batch = {k: v for k, v in unpacked.items() if k != "encoder_segment_ids"}
    with pytest.raises(KeyError, match=r"\['encoder_segment_ids'\].*cannot tell padding"):
        train_step(state, partitioner.shard_batch(batch), jax.random.key(0))


def test_the_local_mixture_unpacked_carries_segment_ids(tmp_path):
    corpus = write_corpus(str(tmp_path), languages=("en",), documents=12, files=1)
    ds = tasks.get_dataset(
        tasks.LOCAL_MIXTURE,
        sequence_length={"inputs": 64, "targets": 64},
        data_dir=corpus,
        vocab_path=vocab_path(),
        pack=False,
    )
    rows = list(ds.take(8).as_numpy_iterator())
    assert {"encoder_segment_ids", "decoder_segment_ids"} <= set(rows[0])
    for row in rows:
        real = row["decoder_segment_ids"] == 1
        assert real.any() and set(np.unique(row["decoder_segment_ids"])) <= {0, 1}
        np.testing.assert_array_equal(row["decoder_loss_weights"] > 0, real)
        # Real tokens come first, then padding: one example per row.
        assert not np.any(np.diff(row["encoder_segment_ids"]) > 0)
