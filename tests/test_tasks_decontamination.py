"""13-gram decontamination: the CLI builds the set, the pipeline drops and counts matches."""

import json

import pytest
import tensorflow as tf
from data_fixtures import vocab_path

from alexatm_jax.cli import decontaminate as cli
from tasks import counters as names
from tasks.counters import COUNTERS, ScopedCounters
from tasks.decontamination import contamination_check, ngram_units
from tasks.file_readers import read_documents
from tasks.preprocessors.documents import prepare_documents, tokenize_documents
from tasks.vocabularies import make_vocabulary, read_special_ids

LEAKED = (
    "The committee met on a rainy Tuesday to decide, after long debate, whether the old bridge "
    "should finally be closed."
)


def test_units_split_cjk_characters_and_drop_punctuation():
    units = [u.decode() for u in ngram_units(tf.constant("Hello, World! 日本語です。")).numpy()]
    assert units == ["hello", "world", "日", "本", "語", "で", "す"]


def test_cli_builds_ngrams_and_pipeline_drops_matches(tmp_path, capsys):
    benchmark = tmp_path / "bench.jsonl"
    benchmark.write_text(
        json.dumps({"question": LEAKED.upper(), "answers": ["short answer"]}) + "\n",
        encoding="utf-8",
    )
    plain = tmp_path / "bench.txt"
    plain.write_text("too short to matter\n", encoding="utf-8")
    out = tmp_path / "bench.ngrams"
    cli.main(["--benchmarks", str(benchmark), str(plain), "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "1 shorter than 13 units" in printed
    assert len(out.read_text().splitlines()) == len(LEAKED.split()) - 13 + 1

    corpus = tmp_path / "docs.txt"
    corpus.write_text(
        "A clean document about rivers and hills.\n\n"
        f"Intro line.\n{LEAKED.replace(',', ' ;')} More text.\n\nAnother clean one.\n",
        encoding="utf-8",
    )
    counters = ScopedCounters("decontamination_test")
    docs = read_documents([str(corpus)], counters, 100_000)
    docs = prepare_documents(
        docs.map(lambda t: {"text": t, "rng": tf.constant([0, 0], tf.int64)}),
        max_bytes=100_000,
        counters=counters,
    )
    kept = tokenize_documents(
        docs,
        vocabulary=make_vocabulary(vocab_path()),
        ids=read_special_ids(vocab_path()),
        counters=counters,
        spoken_share=0.7,
        contaminated=contamination_check(str(out)),
    )
    assert len(list(kept)) == 2
    assert COUNTERS.snapshot()["decontamination_test"][names.CONTAMINATED] == 1


def test_cli_rejects_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--benchmarks", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "benchmark files not found" in capsys.readouterr().err
