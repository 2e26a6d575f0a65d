"""End to end over a local corpus: objective statistics, invariants, determinism, features."""

import os
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf
from data_fixtures import document, vocab_path, write_corpus

import tasks
from tasks.inspection import collect_examples, is_subsequence, runs_of_ones
from tasks.sources import is_validation

LENGTHS = {"inputs": 128, "targets": 128}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(
        str(tmp_path_factory.mktemp("corpus")), languages=("en", "fr", "hi"), documents=60
    )


def _examples(corpus, count, **kwargs):
    ds = tasks.get_dataset(
        tasks.LOCAL_MIXTURE,
        sequence_length=LENGTHS,
        data_dir=corpus,
        vocab_path=vocab_path(),
        feature_converter=False,
        **kwargs,
    )
    return collect_examples(ds, count)


@pytest.fixture(scope="module")
def records(corpus):
    return _examples(corpus, 5000, seed=7)


def test_objective_statistics(records):
    denoise = [r for r in records if r.objective == "denoise"]
    clm = [r for r in records if r.objective == "clm"]
    assert len(records) == 5000
    assert abs(len(clm) / len(records) - 0.2) < 0.02
    deleted = sum(len(r.targets) - len(r.inputs) for r in denoise)
    assert abs(deleted / sum(len(r.targets) for r in denoise) - 0.15) < 0.005
    spans = [n for r in denoise for _, n in runs_of_ones(r.noise_mask)]
    assert abs(np.mean(spans) - 2.93) < 0.15  # documented value for 128-token targets
    fractions = np.array([r.clm_split_point / r.clm_document_length for r in clm])
    assert fractions.min() >= 0.2 - 0.05 and fractions.max() <= 0.8 + 0.05
    assert abs(fractions.mean() - 0.5) < 0.03


def test_denoise_inputs_are_subsequences_without_clm(records):
    ids = tasks.read_special_ids(vocab_path())
    for r in records:
        if r.objective != "denoise":
            continue
        assert is_subsequence(r.inputs, r.targets)
        assert r.inputs == [t for t, m in zip(r.targets, r.noise_mask, strict=True) if not m]
        assert ids.clm not in r.inputs and r.targets[-1] == ids.eos and r.inputs[-1] == ids.eos
        assert len(r.targets) == 128


def test_clm_inputs_start_with_clm_and_targets_continue(records):
    ids = tasks.read_special_ids(vocab_path())
    for r in records:
        if r.objective != "clm":
            continue
        assert r.inputs[0] == ids.clm and r.inputs.count(ids.clm) == 1
        assert r.inputs[-1] == ids.eos and r.targets[-1] == ids.eos
        assert ids.doc not in r.inputs and ids.doc not in r.targets  # one document, no separator
        assert len(r.inputs) <= 128 and len(r.targets) <= 128


def test_languages_follow_intended_rates(records):
    rates = tasks.mixture_rates(tasks.LOCAL_MIXTURE)
    for language in ("en", "fr", "hi"):
        intended = sum(rate for name, rate in rates.items() if f"_{language}_" in name)
        realised = np.mean([r.language == language for r in records])
        assert abs(realised - intended) < 0.03


def test_same_seed_same_examples_other_seed_differs(corpus, records):
    again = _examples(corpus, 40, seed=7)  # the `records` fixture used seed 7
    other = _examples(corpus, 40, seed=8)
    assert [r.targets for r in records[:40]] == [r.targets for r in again]
    assert [r.inputs for r in records[:40]] == [r.inputs for r in again]
    assert [r.inputs for r in records[:40]] != [r.inputs for r in other]


def test_model_features_are_packed_and_reiteration_repeats_them(corpus):
    ds = tasks.get_dataset(
        tasks.LOCAL_MIXTURE,
        sequence_length=LENGTHS,
        data_dir=corpus,
        vocab_path=vocab_path(),
        seed=1,
        shard_index=1,
        num_shards=2,
    ).batch(8)
    a = next(ds.as_numpy_iterator())
    b = next(ds.as_numpy_iterator())  # a new iterator over the same dataset: the same stream
    assert set(a) == set(tasks.MODEL_FEATURES)
    for name in tasks.MODEL_FEATURES:
        assert a[name].shape == (8, 128) and (a[name] == b[name]).all()
    assert (a["decoder_loss_weights"] == (a["decoder_segment_ids"] > 0)).all()


def test_validation_split_reads_once(corpus):
    records = _examples(corpus, 10_000, split="validation")
    assert 0 < len(records) < 200  # ~2% of the documents, read once, not repeated


def _texts(ds) -> list[bytes]:
    """The `text` feature of a source dataset."""
    return [ex["text"] for ex in ds.as_numpy_iterator()]


def _write_split_corpus(root: str, held_out: dict[str, int], train: int = 30) -> str:
    """DATA_DIR/<lang>/part0.txt with exactly `held_out[lang]` validation documents (by the
    text hash at the default 20 per mille) and `train` training documents per language."""
    rng = random.Random(0)
    for language, wanted in held_out.items():
        picked = {True: [], False: []}
        while len(picked[True]) < wanted or len(picked[False]) < train:
            texts = [document(rng, language) for _ in range(500)]
            for text, held in zip(texts, is_validation(tf.constant(texts), 20).numpy()):
                picked[bool(held)].append(text)
        docs = picked[True][:wanted] + picked[False][:train]
        rng.shuffle(docs)
        os.makedirs(os.path.join(root, language))
        with open(os.path.join(root, language, "part0.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
    return root


def test_repeated_validation_mixes_every_language_with_held_out_documents(tmp_path):
    """The trainer's evaluation stream (validation, repeated, documents not shuffled): a language
    with a single held-out document does not stall it and one with none is just absent."""
    held_out = {"en": 1, "fr": 0, "hi": 3}
    data_dir = _write_split_corpus(str(tmp_path), held_out)
    config = tasks.MixtureConfig(vocab_path=vocab_path(), languages=tuple(held_out))
    records = collect_examples(
        tasks.get_dataset(
            tasks.LOCAL_MIXTURE,
            sequence_length=LENGTHS,
            split="validation",
            num_epochs=None,
            data_dir=data_dir,
            config=config,
            feature_converter=False,
        ),
        60,
    )
    assert len(records) == 60
    assert {r.language for r in records} == {"en", "hi"}
    for language, count in held_out.items():
        source = seqio.get_mixture_or_task(f"alexatm_local_{language}_denoise").source
        texts = {
            split: set(_texts(source.get_dataset(split, shuffle=False)))
            for split in ("train", "validation")
        }
        assert len(texts["validation"]) == count and len(texts["train"]) == 30
        assert not texts["train"] & texts["validation"]
