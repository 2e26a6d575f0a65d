"""Data-file integrity: truncated or corrupt gzip files are skipped by name and counted, problem
counters count each bad record once however often it is re-read, and the trainer reports the
counters (log and metrics.jsonl)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pathlib

import tensorflow as tf

from tasks import counters as names
from tasks.corpus_files import iter_documents
from tasks.counters import COUNTERS, PipelineCounters, ScopedCounters
from tasks.file_readers import read_documents
from tasks.preprocessors.documents import prepare_documents

REPO = pathlib.Path(__file__).resolve().parents[1]
LINES = [f"document {i} with a few words in it" for i in range(50)]


def write_gzip_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """good.txt.gz (50 documents), and damaged copies: truncated.txt.gz (the first half of the
    bytes) and corrupt.jsonl.gz (bytes flipped in the middle)."""
    good = directory / "good.txt.gz"
    with gzip.open(good, "wt", encoding="utf-8") as f:
        f.write("\n\n".join(LINES) + "\n")
    raw = good.read_bytes()
    truncated = directory / "truncated.txt.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    records = "".join(json.dumps({"text": line}) + "\n" for line in LINES).encode()
    corrupt = bytearray(gzip.compress(records))
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 4):
        corrupt[i] ^= 0xFF
    (directory / "corrupt.jsonl.gz").write_bytes(bytes(corrupt))
    return {"good": good, "truncated": truncated, "corrupt": directory / "corrupt.jsonl.gz"}


def test_damaged_gzip_files_are_skipped_by_name_and_counted_once(tmp_path, caplog):
    files = write_gzip_files(tmp_path)
    registry = PipelineCounters()
    counters = ScopedCounters("gz", registry)
    with caplog.at_level(logging.WARNING):
        docs = read_documents(sorted(str(p) for p in files.values()), counters, 100_000)
        once = [d.decode() for d in docs.as_numpy_iterator()]
        thrice = list(docs.repeat(3).as_numpy_iterator())
    assert sorted(once) == sorted(LINES)  # nothing of the damaged files, all of the good one
    assert len(thrice) == 3 * len(LINES)
    bad = registry.bad_files()
    assert sorted(bad) == sorted([str(files["truncated"]), str(files["corrupt"])])
    assert "truncated gzip data" in bad[str(files["truncated"])]
    assert "corrupt gzip data" in bad[str(files["corrupt"])]
    assert registry.totals()[names.BAD_FILES] == 2
    for path in (files["truncated"], files["corrupt"]):  # one warning per file, naming it
        assert caplog.text.count(f"skipping {path}:") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the Python reader skips them the same way
        assert sorted(iter_documents([str(p) for p in files.values()])) == sorted(LINES)
    assert f"skipping {files['truncated']}" in caplog.text


def test_problem_counters_count_each_bad_record_once_per_pass(tmp_path):
    jsonl = tmp_path / "mixed.jsonl"
    bad_lines = ["not json", "{}", '{"text": 5}', "[1, 2]"]
    jsonl.write_text(
        "\n".join([json.dumps({"text": "good one"})] + bad_lines + ['{"text": "fine"}']) + "\n"
    )
    text = tmp_path / "text.txt"
    text.write_bytes(b"clean\n\nbroken \xff bytes\n\n")
    registry = PipelineCounters()
    for scope in ("denoise", "clm"):  # two tasks read the same files, three passes each
        counters = ScopedCounters(scope, registry)
        docs = read_documents([str(jsonl), str(text)], counters, 100_000).repeat(3)
        docs = docs.map(lambda t: {"text": t, "rng": tf.constant([0, 0], tf.int64)})
        list(prepare_documents(docs, max_bytes=100_000, counters=counters))
    totals = registry.totals()
    assert totals[names.INVALID_JSON] == len(bad_lines)
    assert totals[names.INVALID_UTF8] == 1
    assert totals[names.DOCUMENTS] == 2 * 3 * 4  # DOCUMENTS counts records read, re-reads too
    snapshot = registry.snapshot()
    assert snapshot["denoise"][names.INVALID_UTF8] == snapshot["clm"][names.INVALID_UTF8] == 1


def test_the_trainer_reports_pipeline_counters(tmp_path, caplog, demo_vocabulary):
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.partitioning import MeshConfig
    from alexatm_jax.training.trainer import TrainConfig, train

    # The counters are per process: start from zero whatever ran before in this worker.
    COUNTERS.reset()
    data_dir = tmp_path / "data"
    (data_dir / "en").mkdir(parents=True)
    (data_dir / "en" / "sample.txt").write_text(
        (REPO / "data" / "sample" / "en" / "part1.txt").read_text(encoding="utf-8")
    )
    write_gzip_files(data_dir / "en")
    (data_dir / "en" / "records.jsonl").write_text(
        '{"text": "A short extra record."}\nnot json\n{"id": 3}\n'
    )
    model_dir = tmp_path / "run"
    tiny = ModelConfig(
        vocab_size=4000,
        d_model=16,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_encoder_heads=2,
        num_decoder_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_positions=32,
        dropout_rate=0.0,
    )
    with caplog.at_level(logging.WARNING):
        train(
            TrainConfig(
                model_config=tiny,
                model_dir=str(model_dir),
                train_steps=2,
                batch_size=2,
                sequence_length={"inputs": 16, "targets": 16},
                mesh_config=MeshConfig(),
                rules="data_parallel",
                checkpoint_period=2,
                log_every=1,
                data_dir=str(data_dir),
                progress_bar=False,
            )
        )
    assert "data pipeline at start: bad_files=2" in caplog.text
    assert f"skipped {data_dir / 'en' / 'truncated.txt.gz'}: truncated gzip data" in caplog.text
    records = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    assert records[-1]["data/bad_files"] == 2.0
    assert records[-1]["data/invalid_jsonl_records"] == 2.0
    assert os.path.isdir(model_dir / "checkpoints" / "2")
