"""With a release-style vocabulary (a BOS piece), pretraining examples take the released
tokenizer's template: `<s>` before inputs and targets, `<s> ▁ [CLM]` before CLM inputs, and the
sequence lengths still hold (EOS kept)."""

from __future__ import annotations

from data_fixtures import write_corpus
from inference_helpers import train_tiny_sentencepiece

import tasks
from tasks.inspection import collect_examples, is_subsequence, runs_of_ones

LENGTHS = {"inputs": 64, "targets": 64}


def test_release_vocabulary_examples_follow_the_release_template(tmp_path):
    vocab = train_tiny_sentencepiece(str(tmp_path), release_style=True)
    corpus = write_corpus(str(tmp_path / "corpus"), languages=("en", "fr"), documents=30)
    ids = tasks.read_special_ids(vocab)
    assert ids.release_template and (ids.bos, ids.eos) == (1, 2)
    ds = tasks.get_dataset(
        tasks.LOCAL_MIXTURE,
        sequence_length=LENGTHS,
        data_dir=corpus,
        vocab_path=vocab,
        feature_converter=False,
        seed=3,
    )
    records = collect_examples(ds, 300)
    clm = [r for r in records if r.objective == "clm"]
    denoise = [r for r in records if r.objective == "denoise"]
    assert clm and denoise
    for r in clm:
        assert r.inputs[:3] == [ids.bos, ids.space, ids.clm] and r.targets[0] == ids.bos
    for r in denoise:
        assert r.inputs[0] == r.targets[0] == ids.bos and ids.clm not in r.inputs
        assert is_subsequence(r.inputs, r.targets)
        assert len(r.noise_mask) == len(r.targets) and r.noise_mask[0] == 0
        deleted = sum(n for _, n in runs_of_ones(r.noise_mask))
        assert deleted == len(r.targets) - len(r.inputs)
    for r in records:
        assert r.inputs[-1] == r.targets[-1] == ids.eos
        assert len(r.inputs) <= LENGTHS["inputs"] and len(r.targets) <= LENGTHS["targets"]
    assert max(len(r.targets) for r in denoise) == LENGTHS["targets"]
