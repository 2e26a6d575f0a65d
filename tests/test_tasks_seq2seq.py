"""Seq2seq fine-tuning tasks from user files (tasks/seq2seq.py): JSONL (plain and gzipped) with
configured fields, a local TFDS dataset,
HuggingFace parquet / arrow files, the prompt and the release template, truncation that counts,
bad records skipped and counted, packing on and off holding the same pairs, a mixture with the
pretraining data, and `alexatm-inspect` showing the task."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import seqio
from data_fixtures import write_corpus
from inference_helpers import train_tiny_sentencepiece

import tasks
from tasks.seq2seq import Seq2SeqTask, register_seq2seq_task

PAIRS = [
    {"src": f"the cat number {i} sat on the mat", "tgt": f"le chat {i}", "id": i} for i in range(12)
]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return train_tiny_sentencepiece(str(tmp_path_factory.mktemp("vocab")), release_style=True)


def _write_jsonl(path, rows, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in extra_lines:
            f.write(line + "\n")


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("pairs")
    bad = ["not json", json.dumps({"src": 3, "tgt": "x"}), json.dumps({"tgt": "no input"})]
    _write_jsonl(data / "train.jsonl", PAIRS, bad)
    _write_jsonl(data / "validation.jsonl.tmp", PAIRS[:3])
    with (
        open(data / "validation.jsonl.tmp", "rb") as f,
        gzip.open(data / "validation.jsonl.gz", "wb") as out,
    ):
        out.write(f.read())
    (data / "validation.jsonl.tmp").unlink()
    return data


def _texts(name, vocab, split="train", lengths=None):
    ds = tasks.get_dataset(
        name,
        sequence_length=lengths or {"inputs": 64, "targets": 32},
        split=split,
        vocab_path=vocab,
        feature_converter=False,
        shuffle=False,
        num_epochs=1,
    )
    return list(ds.as_numpy_iterator())


def test_jsonl_fields_prompt_release_template_and_counted_problems(jsonl_dir, vocab):
    tasks.COUNTERS.reset()
    task = Seq2SeqTask(
        data=str(jsonl_dir), name="s2s_jsonl", input_field="src", target_field="tgt",
        prompt="Translate to French: {input}", metric="chrf",
    )  # fmt: skip
    assert register_seq2seq_task(task, vocab) == "s2s_jsonl"
    examples = _texts("s2s_jsonl", vocab)
    assert len(examples) == len(PAIRS)
    first = examples[0]
    assert first["inputs_pretokenized"].decode() == "Translate to French: " + PAIRS[0]["src"]
    ids = tasks.read_special_ids(vocab)
    for ex in examples:  # <s> ... </s> on both sides, as the release's tokenizer encodes
        assert ex["inputs"][0] == ex["targets"][0] == ids.bos
        assert ex["inputs"][-1] == ex["targets"][-1] == ids.eos
    assert len(_texts("s2s_jsonl", vocab, split="validation")) == 3
    counts = tasks.pipeline_counters()["s2s_jsonl"]
    assert counts["invalid_jsonl_records"] == 3 and counts["truncated_inputs"] == 0
    # Length limits cut (keeping </s>) and count each truncated record once; nothing fails.
    short = _texts("s2s_jsonl", vocab, lengths={"inputs": 8, "targets": 4})
    assert all(len(ex["inputs"]) == 8 and ex["inputs"][-1] == ids.eos for ex in short)
    assert all(len(ex["targets"]) <= 4 and ex["targets"][-1] == ids.eos for ex in short)
    counts = tasks.pipeline_counters()["s2s_jsonl"]
    assert counts["truncated_inputs"] == len(PAIRS) and counts["truncated_targets"] > 0


def test_huggingface_parquet_and_arrow_files_read_like_jsonl(tmp_path, jsonl_dir, vocab):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(PAIRS)
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "validation").mkdir()  # `datasets.save_to_disk` layout: Arrow streams
    with pa.OSFile(str(tmp_path / "validation" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    fields = dict(input_field="src", target_field="tgt")
    register_seq2seq_task(Seq2SeqTask(data=str(tmp_path), name="s2s_hf", **fields), vocab)
    register_seq2seq_task(Seq2SeqTask(data=str(jsonl_dir), name="s2s_ref", **fields), vocab)
    reference = [ex["inputs"].tolist() for ex in _texts("s2s_ref", vocab)]
    for split in ("train", "validation"):
        assert [ex["inputs"].tolist() for ex in _texts("s2s_hf", vocab, split)] == reference


def test_packed_and_unpacked_rows_hold_the_same_pairs(jsonl_dir, vocab):
    register_seq2seq_task(
        Seq2SeqTask(data=str(jsonl_dir), name="s2s_pack", input_field="src", target_field="tgt"),
        vocab,
    )
    lengths = {"inputs": 48, "targets": 24}

    def pairs(pack):
        ds = tasks.get_dataset(
            "s2s_pack", sequence_length=lengths, vocab_path=vocab, pack=pack, shuffle=False,
            num_epochs=1, decoder_start_id=2,
        )  # fmt: skip
        out = []
        for row in ds.as_numpy_iterator():
            for segment in range(1, int(row["encoder_segment_ids"].max()) + 1):
                enc = row["encoder_segment_ids"] == segment
                dec = row["decoder_segment_ids"] == segment
                assert row["decoder_input_tokens"][dec][0] == 2  # the decoder start id
                np.testing.assert_array_equal(
                    row["decoder_input_tokens"][dec][1:], row["decoder_target_tokens"][dec][:-1]
                )
                out.append(
                    (
                        tuple(row["encoder_input_tokens"][enc]),
                        tuple(row["decoder_target_tokens"][dec]),
                        tuple(row["encoder_positions"][enc]),
                    )
                )
        return out

    packed, unpacked = pairs(True), pairs(False)
    assert sorted(packed) == sorted(unpacked) and len(unpacked) == len(PAIRS)


def test_a_mixture_with_the_pretraining_data(tmp_path, jsonl_dir, vocab):
    corpus = write_corpus(str(tmp_path / "corpus"), languages=("en",), documents=10)
    task = Seq2SeqTask(
        data=str(jsonl_dir), name="s2s_mixed", input_field="src", target_field="tgt",
        mix_with={tasks.LOCAL_MIXTURE: 0.25}, rate=0.75,
    )  # fmt: skip
    tasks.register_for(tasks.LOCAL_MIXTURE, data_dir=corpus, config=tasks.MixtureConfig(vocab))
    assert register_seq2seq_task(task, vocab) == "s2s_mixed_mix"
    mixture = seqio.get_mixture_or_task("s2s_mixed_mix")
    names = {t.name for t in mixture.tasks}
    assert "s2s_mixed" in names and any(n.startswith("alexatm_local_") for n in names)
    assert mixture.get_rate(seqio.get_mixture_or_task("s2s_mixed")) == pytest.approx(0.75)
    ds = tasks.get_dataset(
        "s2s_mixed_mix",
        sequence_length={"inputs": 32, "targets": 32},
        data_dir=corpus,
        vocab_path=vocab,
        seed=1,
    )
    assert len(list(ds.take(4).as_numpy_iterator())) == 4


def test_alexatm_inspect_shows_the_task(jsonl_dir, vocab, capsys):
    import gin
    from alexatm_jax.cli.inspect_mixture import main

    gin.clear_config()

    binding = f"Seq2SeqTask.data = '{jsonl_dir}'"
    code = main(
        ["--mixture", "finetune", "--vocab", vocab, "-n", "2", "--gin_param", binding,
         "--gin_param", "Seq2SeqTask.input_field = 'src'",
         "--gin_param", "Seq2SeqTask.target_field = 'tgt'",
         "--inputs_length", "32", "--targets_length", "16", "--stats", "5"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "the cat number" in out and "le chat" in out


def test_a_tfds_dataset_with_its_own_split_names(tmp_path, vocab):
    import tensorflow_datasets as tfds

    class Seq2seqTestPairs(tfds.core.GeneratorBasedBuilder):
        """A local TFDS dataset of 6 train and 2 dev pairs."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"src": text, "tgt": text})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "dev": self._generate_examples(2)}

        def _generate_examples(self, count):
            for i in range(count):
                yield i, {"src": f"the cat {i}", "tgt": f"le chat {i}"}

    Seq2seqTestPairs(data_dir=str(tmp_path)).download_and_prepare()
    task = Seq2SeqTask(
        data="tfds:seq2seq_test_pairs:1.0.0", name="s2s_tfds", input_field="src",
        target_field="tgt", validation_split="dev", tfds_data_dir=str(tmp_path),
        prompt="Q: {input}",
    )  # fmt: skip
    register_seq2seq_task(task, vocab)
    train, dev = (_texts("s2s_tfds", vocab, split) for split in ("train", "validation"))
    assert (len(train), len(dev)) == (6, 2)
    assert sorted(ex["inputs_pretokenized"].decode() for ex in dev) == [
        "Q: the cat 0",
        "Q: the cat 1",
    ]
    assert all(ex["targets"][-1] == tasks.read_special_ids(vocab).eos for ex in train)
