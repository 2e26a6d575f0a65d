"""Local file sources: formats, bad input, sharding and the validation split."""

import gzip
import json
import os
import time

import pytest
import seqio
import tensorflow as tf
from data_fixtures import vocab_path, write_corpus

from tasks import counters as names
from tasks.corpus_files import corpus_layout, iter_documents
from tasks.counters import COUNTERS, ScopedCounters
from tasks.file_readers import read_documents
from tasks.preprocessors.documents import (
    SHUFFLE_FEATURE,
    prepare_documents,
    shuffle_documents,
    tokenize_documents,
)
from tasks.sources import LocalTextSource
from tasks.vocabularies import make_vocabulary, read_special_ids


def _texts(ds) -> list[str]:
    return [t.decode("utf-8") for t in ds.as_numpy_iterator()]


def _source(files, per_mille=20, name="test_src"):
    return LocalTextSource(
        files, name=name, max_document_bytes=100_000, validation_per_mille=per_mille
    )


def test_txt_and_jsonl_formats_gzipped_or_not(tmp_path):
    (tmp_path / "a.txt").write_text(
        "first doc\nline two\n\n \t \nsecond doc\n\n\n", encoding="utf-8"
    )
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gz doc\n")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "json doc", "id": 1})
        + "\nnot json\n"
        + json.dumps({"id": 2})
        + "\n"
        + json.dumps({"text": 5})
        + "\n\n"
        + json.dumps({"text": "tab\tand\nnewline"})
        + "\n",
        encoding="utf-8",
    )
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "gz json"}) + "\n")
    files = sorted(str(p) for p in tmp_path.iterdir())
    counters = ScopedCounters("formats")
    got = _texts(read_documents(files, counters, 100_000))
    expected = {
        "first doc\nline two",
        "second doc",
        "gz doc",
        "json doc",
        "tab\tand\nnewline",
        "gz json",
    }
    assert sorted(got) == sorted(expected)
    assert sorted(iter_documents(files)) == sorted(expected)  # the Python reader agrees
    assert COUNTERS.snapshot()["formats"][names.INVALID_JSON] == 3


def test_bad_documents_are_skipped_repaired_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good one\n\n\xe3\x80\x80 \xc2\xa0\n\nbroken \xff\xfe bytes\n\n   \n\nlast\n")
    counters = ScopedCounters("bad_docs")
    docs = read_documents([str(path)], counters, 100_000)
    docs = docs.map(lambda t: {"text": t, "rng": tf.constant([0, 0], tf.int64)})
    got = _texts(
        prepare_documents(docs, max_bytes=100_000, counters=counters).map(lambda ex: ex["text"])
    )
    assert got == ["good one", "broken \ufffd\ufffd bytes", "last"]
    counts = COUNTERS.snapshot()["bad_docs"]
    assert (
        counts[names.EMPTY] == 1
    )  # the Unicode-whitespace-only one (blank lines never form a doc)
    assert counts[names.INVALID_UTF8] == 1 and counts[names.DOCUMENTS] == 4


def test_ten_megabyte_documents_are_cut_not_fatal(tmp_path):
    line = ("déjà vu " * 1250).strip()  # 10 KB of 1- and 2-byte characters
    (tmp_path / "one_line.txt").write_text(line * 1000 + "\n", encoding="utf-8")  # a 10 MB line
    (tmp_path / "many_lines.txt").write_text("\n".join([line] * 1000) + "\n", encoding="utf-8")
    counters = ScopedCounters("huge")

    def pieces(name):
        docs = read_documents([str(tmp_path / name)], counters, 100_000)
        docs = docs.map(lambda t: {"text": t, "rng": tf.constant([0, 0], tf.int64)})
        return prepare_documents(docs, max_bytes=100_000, counters=counters)

    start = time.time()
    one = _texts(pieces("one_line.txt").map(lambda ex: ex["text"]))
    many = _texts(pieces("many_lines.txt").map(lambda ex: ex["text"]))
    assert time.time() - start < 60
    assert all(len(p.encode()) <= 100_000 for p in one + many)
    assert "".join(one) == line * 1000  # cut at character boundaries, nothing lost
    assert abs(sum(len(p) for p in many) - 1000 * (len(line) + 1)) < 1000  # edges stripped
    assert COUNTERS.snapshot()["huge"][names.SPLIT_LONG] == 2
    ids = read_special_ids(vocab_path())
    tokens = tokenize_documents(
        pieces("one_line.txt").take(2),
        vocabulary=make_vocabulary(vocab_path()),
        ids=ids,
        counters=counters,
        spoken_share=0.7,
    )
    assert sum(int(tf.size(ex["tokens"])) for ex in tokens) > 50_000  # 2 x 100 KB pieces


def test_corpus_layout_skips_unknown_and_empty_dirs(tmp_path, caplog):
    write_corpus(str(tmp_path), languages=("en", "fr"), documents=4)
    os.makedirs(tmp_path / "xx")
    (tmp_path / "xx" / "a.txt").write_text("doc\n")
    os.makedirs(tmp_path / "de")  # a language directory without files
    (tmp_path / "fr" / "notes.md").write_text("ignored\n")
    (tmp_path / "fr" / "fake.txt.gz").write_text("not gzip\n")
    os.makedirs(tmp_path / "en" / "nested")
    (tmp_path / "en" / "nested" / "more.jsonl").write_text('{"text": "nested doc"}\n')
    layout = corpus_layout(str(tmp_path))
    assert sorted(layout.files) == ["en", "fr"]
    assert layout.unknown_dirs == ["xx"] and layout.empty_dirs == ["de"]
    assert layout.bad_files == [str(tmp_path / "fr" / "fake.txt.gz")]
    assert all(p.endswith(".txt") for p in layout.files["fr"])
    assert str(tmp_path / "en" / "nested" / "more.jsonl") in layout.files["en"]
    assert "'xx' is not a language code" in caplog.text and "skipping language de" in caplog.text


def test_empty_or_missing_data_dir_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"no usable language directory.*DATA_DIR/<lang>"):
        corpus_layout(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus_layout(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="ALEXATM_DATA_DIR"):
        corpus_layout("")


@pytest.mark.parametrize("num_files, num_shards", [(4, 2), (2, 3)])  # by file, by document
def test_shards_are_disjoint_and_complete(tmp_path, num_files, num_shards):
    data_dir = write_corpus(str(tmp_path), languages=("en",), documents=90, files=num_files)
    source = _source(corpus_layout(data_dir).files["en"], per_mille=0)
    everything = set(_texts(source.get_dataset("train", shuffle=False).map(lambda ex: ex["text"])))
    shards = [
        _texts(
            source.get_dataset(
                "train", shuffle=True, seed=5, shard_info=seqio.ShardInfo(i, num_shards)
            ).map(lambda ex: ex["text"])
        )
        for i in range(num_shards)
    ]
    assert sum(len(s) for s in shards) == len(everything) == 90
    assert set().union(*map(set, shards)) == everything


def test_validation_split_is_a_stable_disjoint_share(tmp_path):
    data_dir = write_corpus(str(tmp_path), languages=("en",), documents=400)
    source = _source(corpus_layout(data_dir).files["en"], per_mille=100)
    split = {
        s: set(
            _texts(
                source.get_dataset(s, shuffle=True, seed=s == "train").map(lambda ex: ex["text"])
            )
        )
        for s in ("train", "validation")
    }
    assert not split["train"] & split["validation"]
    assert 20 <= len(split["validation"]) <= 65  # 10% of 400 documents, by hash
    again = set(_texts(source.get_dataset("validation", shuffle=False).map(lambda ex: ex["text"])))
    assert again == split["validation"]


def _documents_then_failure(texts: list[str], shuffle: bool) -> tf.data.Dataset:
    """Source-like {"text", "rng"[, shuffle marker]} elements of `texts`, then one element whose
    reading fails: a stand-in for documents that are slow or not yet available."""

    @tf.autograph.experimental.do_not_convert
    def fail(text):
        never = tf.debugging.assert_less(tf.strings.length(text), 0, message="read too far")
        with tf.control_dependencies([never]):
            return tf.identity(text)

    ds = tf.data.Dataset.from_tensor_slices(texts).concatenate(
        tf.data.Dataset.from_tensors("unreadable").map(fail)
    )
    marker = {SHUFFLE_FEATURE: tf.constant(True)} if shuffle else {}
    rng = tf.constant([0, 0], tf.int64)
    return ds.map(lambda text: {"text": text, "rng": rng, **marker})


def test_unshuffled_documents_pass_through_without_waiting_for_a_window():
    texts = ["a", "b", "c"]
    kept = shuffle_documents(_documents_then_failure(texts, shuffle=False), window=1024, salt=1)
    assert set(kept.element_spec) == {"text", "rng"}
    assert _texts(kept.take(3).map(lambda ex: ex["text"])) == texts
    shuffled = shuffle_documents(_documents_then_failure(texts, shuffle=True), window=1024, salt=1)
    assert set(shuffled.element_spec) == {"text", "rng"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="read too far"):
        next(iter(shuffled))  # a shuffled stream needs its whole window first


def test_only_shuffled_source_streams_carry_the_shuffle_marker(tmp_path):
    data_dir = write_corpus(str(tmp_path), languages=("en",), documents=5)
    source = _source(corpus_layout(data_dir).files["en"])
    assert SHUFFLE_FEATURE in source.get_dataset("train", shuffle=True, seed=0).element_spec
    assert SHUFFLE_FEATURE not in source.get_dataset("validation", shuffle=False).element_spec
