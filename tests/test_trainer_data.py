"""The SeqIO side of the data bridge: exact and reseeded resume of a sample-corpus stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gin

tasks = pytest.importorskip("tasks")

from alexatm_jax.data.seqio_batches import SeqioHostBatches, derived_seed  # noqa: E402

pytestmark = pytest.mark.usefixtures("demo_vocabulary")  # the streams use the default vocabulary

STREAM = dict(
    mixture="alexatm_pretrain_local",
    sequence_length={"inputs": 32, "targets": 32},
    split="train",
    seed=3,
    shard_index=0,
    num_shards=1,
)


@pytest.fixture(scope="module")
def small_mixture():
    """Two languages and small shuffle buffers, so each stream starts in seconds."""
    gin.clear_config()
    gin.parse_config(
        ["MixtureConfig.languages = ('en', 'de')", "MixtureConfig.document_shuffle_buffer = 16"]
    )
    yield
    gin.clear_config()


def test_exact_resume_continues_the_stream_even_with_another_batch_size(small_mixture):
    source = SeqioHostBatches(**STREAM, per_host_batch_size=2)
    source.next_batch()
    saved = json.loads(json.dumps(source.state()))
    later = [source.next_batch() for _ in range(2)]
    assert saved["examples_consumed"] == 2 and saved["stream_position"] == 2
    resumed = SeqioHostBatches(**STREAM, per_host_batch_size=4, resume_state=saved)
    batch = resumed.next_batch()
    for name, value in batch.items():
        np.testing.assert_array_equal(value, np.concatenate([later[0][name], later[1][name]]))
    assert resumed.state()["examples_consumed"] == 6


def test_reseed_resume_starts_a_new_stream_and_records_it(small_mixture):
    source = SeqioHostBatches(**STREAM, per_host_batch_size=2)
    first = source.next_batch()
    reseeded = SeqioHostBatches(
        **STREAM, per_host_batch_size=2, resume_state=source.state(), resume_mode="reseed"
    )
    state = reseeded.state()
    assert state["stream_seed"] == derived_seed(3, 2) and state["stream_position"] == 0
    batch = reseeded.next_batch()
    assert not np.array_equal(batch["decoder_target_tokens"], first["decoder_target_tokens"])
    again = SeqioHostBatches(**STREAM, per_host_batch_size=2, resume_state=state)
    np.testing.assert_array_equal(
        again.next_batch()["decoder_target_tokens"], batch["decoder_target_tokens"]
    )
