"""The index-based reader of prepared data: rows as a pure function of the index, the same
global batches on any number of hosts, exact resume in constant time, SeqIO's packing, and the
mixture's statistics (tests/prepared_fixtures.py writes the data; no TensorFlow but for the
packing comparison)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from alexatm_jax.data import index_sampler
from alexatm_jax.data.prepared_batches import PreparedHostBatches, PreparedRows
from alexatm_jax.data.prepared_examples import packed_row
from tests import prepared_fixtures

LENGTHS = {"inputs": 128, "targets": 128}
LATE_STEP, PAPER_BATCH = 400_000, 2048  # the 20B job's late preemption, its global batch


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("prepared"))
    manifest, recipe = prepared_fixtures.write_prepared(directory)
    return directory, manifest, recipe


def rows_of(prepared, split="train", seed=0, recipe=None) -> PreparedRows:
    directory, manifest, default_recipe = prepared
    return PreparedRows(
        directory,
        manifest,
        recipe or default_recipe,
        split=split,
        sequence_length=LENGTHS,
        seed=seed,
    )


def host_sources(rows, num_shards, global_batch, state=None):
    return [
        PreparedHostBatches(
            rows,
            shard_index=i,
            num_shards=num_shards,
            per_host_batch_size=global_batch // num_shards,
            preparation_digest="test",
            resume_state=state,
        )
        for i in range(num_shards)
    ]


def global_batches(sources, steps):
    """`steps` global batches assembled from the hosts' batches in shard order."""
    out = []
    for _ in range(steps):
        parts = [source.next_batch() for source in sources]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_a_row_is_a_pure_function_of_its_index(prepared):
    first, second = rows_of(prepared), rows_of(prepared)
    forward = [first.row(g) for g in range(40)]
    backward = [second.row(g) for g in reversed(range(40))][::-1]
    assert_same(forward, backward)
    other_seed = rows_of(prepared, seed=1).row(3)
    assert any((other_seed[k] != forward[3][k]).any() for k in other_seed)


def test_global_batches_are_the_same_on_1_2_and_4_hosts(prepared):
    rows = rows_of(prepared)
    reference = global_batches(host_sources(rows, 1, 8), 3)
    for hosts in (2, 4):
        assert_same(global_batches(host_sources(rows, hosts, 8), 3), reference)


@pytest.mark.parametrize("hosts_before,hosts_after", [(2, 4), (2, 1), (4, 2)])
def test_a_run_resumes_exactly_on_another_number_of_hosts(prepared, hosts_before, hosts_after):
    rows = rows_of(prepared)
    uninterrupted = global_batches(host_sources(rows, 1, 8), 5)
    before = host_sources(rows, hosts_before, 8)
    first = global_batches(before, 2)
    states = {str(source.state()) for source in before}
    assert len(states) == 1  # every host saves the same position
    after = host_sources(rows, hosts_after, 8, state=before[0].state())
    assert_same(first + global_batches(after, 3), uninterrupted)


def test_a_resume_at_step_400000_is_as_fast_as_step_one(prepared):
    """The first batch after a restore at step 400,000 of the 20B job (2048 rows per step)
    costs what the first batch of the run costs: no rows are replayed."""

    def first_batch_seconds(step):
        start = time.perf_counter()
        state = {
            "source": "prepared",
            "format": 1,
            "rows_consumed": step * PAPER_BATCH,
            "stream": host_sources(rows_of(prepared), 1, 64)[0].state()["stream"],
        }
        source = host_sources(rows_of(prepared), 32, PAPER_BATCH, state=state)[5]
        source.next_batch()
        return time.perf_counter() - start

    first_batch_seconds(0)  # warm the page cache and imports
    early = min(first_batch_seconds(0) for _ in range(3))
    late = min(first_batch_seconds(LATE_STEP) for _ in range(3))
    assert late < 2 * early + 0.05, (early, late)


def test_packed_rows_equal_seqio_packed_converter():
    """packed_row gives exactly what SeqIO's packed EncDecFeatureConverter gives for the same
    examples (decoder inputs restart at each segment, loss weights, positions)."""
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    examples = [
        (rng.integers(5, 50, n_in).astype(np.int32), rng.integers(5, 50, n_t).astype(np.int32))
        for n_in, n_t in ((7, 5), (3, 9), (4, 2))
    ]
    lengths = {"inputs": 16, "targets": 20}
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": i, "targets": t} for i, t in examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    converter = seqio.EncDecFeatureConverter(pack=True, bos_id=7)
    (expected,) = list(converter(ds, task_feature_lengths=lengths).as_numpy_iterator())
    row = packed_row(examples, lengths, decoder_start_token_id=7)
    assert row.keys() == expected.keys()
    for key in row:
        np.testing.assert_array_equal(row[key], expected[key], err_msg=key)


def test_the_mixture_statistics_hold(prepared):
    rows = rows_of(prepared)
    examples = [ex for g in range(3000) for ex in rows.examples(g)]
    clm = [ex for ex in examples if ex.objective == "clm"]
    denoise = [ex for ex in examples if ex.objective == "denoise"]
    assert abs(len(clm) / len(examples) - prepared_fixtures.CLM_SHARE) < 0.02
    deleted = sum(ex.targets.size - ex.inputs.size for ex in denoise)
    assert abs(deleted / sum(ex.targets.size for ex in denoise) - 0.15) < 0.005
    assert all(ex.noise_mask.sum() == ex.targets.size - ex.inputs.size for ex in denoise)
    for language, rate in prepared_fixtures.LANGUAGES.items():
        share = np.mean([ex.language == language for ex in examples])
        assert abs(share - rate) < 0.03, (language, share)
    ids = prepared_fixtures.SPECIAL_IDS
    assert all(ex.inputs[0] == ids["clm"] and ex.inputs[-1] == ids["eos"] for ex in clm)
    fractions = [ex.clm_split_point / ex.clm_document_length for ex in clm]
    assert 0.45 < np.mean(fractions) < 0.55
    assert all(ex.targets[-1] == ids["eos"] and ids["clm"] not in ex.inputs for ex in denoise)
    assert {ex.targets.size for ex in denoise} == {LENGTHS["targets"]}


def test_an_epoch_reads_every_window_once():
    for size in (1, 7, 100, 4097):
        key = index_sampler.key_of("epoch", size)
        assert sorted(index_sampler.permute(i, size, key) for i in range(size)) == list(range(size))


def test_row_blocks_hold_the_exact_composition():
    counts = index_sampler.largest_remainder({"a": 0.5, "b": 0.3, "c": 0.2}, 100)
    blocks = index_sampler.RowBlocks(counts, key=3)
    located = [blocks.locate(g) for g in range(300)]
    for label, count in counts.items():
        ranks = [rank for name, rank in located if name == label]
        assert ranks == list(range(3 * count))  # each label's rows numbered 0, 1, 2, ... in order


def test_the_release_template_wraps_every_example(prepared):
    rows = rows_of(prepared, recipe=prepared_fixtures.recipe(release_template=True))
    for ex in (ex for g in range(200) for ex in rows.examples(g)):
        assert ex.targets[0] == 2 and ex.inputs[-1] == 1 and ex.targets[-1] == 1
        if ex.objective == "clm":
            assert list(ex.inputs[:3]) == [2, 5, 3]
        else:
            assert ex.inputs[0] == 2 and ex.noise_mask[0] == 0
        assert ex.targets.size <= LENGTHS["targets"]


def test_a_split_without_documents_for_a_task_leaves_it_out(prepared):
    directory, manifest, recipe = prepared
    units = {k: dict(v) for k, v in manifest["units"].items()}
    hindi = dict(units["local_hi"])
    hindi["splits"] = {"train": hindi["splits"]["train"]}
    units["local_hi"] = hindi
    rows = PreparedRows(
        directory,
        {**manifest, "units": units},
        recipe,
        split="validation",
        sequence_length=LENGTHS,
        seed=0,
    )
    assert {ex.language for g in range(200) for ex in rows.examples(g)} == {"en", "fr"}


def test_rows_read_on_threads_equal_rows_read_in_turn(prepared):
    """Remote data is read on REMOTE_READ_THREADS threads; the rows do not change, also across
    a block boundary, where threads need two blocks' layouts at once."""
    import concurrent.futures

    from alexatm_jax.data.prepared_batches import BLOCK_ROWS

    start = BLOCK_ROWS - 40
    in_turn = rows_of(prepared).rows(start, 80)
    threaded = rows_of(prepared)
    threaded._readers = concurrent.futures.ThreadPoolExecutor(8)
    for _ in range(3):
        assert_same([threaded.rows(start, 80)], [in_turn])
