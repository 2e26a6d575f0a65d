"""`alexatm-data prepare` (tasks/preparation.py): the prepared tokens are the pipeline's, damaged
input is counted and named, re-runs rewrite nothing and resume what is unfinished, changed
settings are refused at read time, workers + finalize give the same data, the CLI's exit codes
and `info`, and a gs:// output."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
from data_fixtures import document, write_corpus

import tasks
from alexatm_jax.cli import data as data_cli
from alexatm_jax.data.prepared_batches import PreparedRows
from alexatm_jax.data.prepared_format import UnitTokens, read_manifest
from tasks import corpus_files, preparation
from tasks.preprocessors.spoken_form import maybe_spoken
from tasks.sources import is_validation

LOCAL = tasks.LOCAL_MIXTURE
MAX_BYTES = 2048
LONG = " ".join(["schaka lomi"] * 600)  # 7,199 bytes: 4 pieces of at most MAX_BYTES
REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(vocab: str, **changes) -> tasks.MixtureConfig:
    base = tasks.MixtureConfig(
        vocab_path=vocab, languages=("en", "fr", "de"), max_document_bytes=MAX_BYTES
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """en: 2 txt files; fr: 1 txt file; de: one damaged file of each kind (bad UTF-8, a bad
    jsonl line, a truncated .gz, a document over MAX_BYTES) besides good documents."""
    import random

    root = str(tmp_path_factory.mktemp("corpus"))
    write_corpus(root, languages=("en",), documents=30, files=2, seed=1)
    write_corpus(root, languages=("fr",), documents=20, files=1, seed=2)
    rng = random.Random(3)
    de = pathlib.Path(root, "de")
    de.mkdir()
    good = [document(rng, "de") for _ in range(12)]
    de.joinpath("good.txt").write_text("\n\n".join(good) + "\n")
    de.joinpath("utf8.txt").write_bytes(b"Guten \xff Tag, sagte er.\n")
    lines = [json.dumps({"text": text}) for text in good[:3]] + ["{not json"]
    de.joinpath("lines.jsonl").write_text("\n".join(lines) + "\n")
    de.joinpath("long.txt").write_text(LONG + "\n")
    de.joinpath("cut.txt.gz").write_bytes(gzip.compress("\n\n".join(good).encode())[:-30])
    return root


@pytest.fixture(scope="module")
def prepared(corpus, demo_vocabulary, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("prepared"))
    manifest = preparation.prepare(
        LOCAL,
        data_dir=corpus,
        config=_config(demo_vocabulary),
        out=out,
        documents_per_part=7,
        progress=False,
    )
    return out, manifest


def _documents(out: str, manifest: dict, unit: str, split: str) -> list[list[int]]:
    entry = manifest["units"][unit]["splits"][split]
    if not entry["documents"]:
        return []
    tokens = UnitTokens(out, entry)
    return [tokens.document(d).tolist() for d in range(tokens.num_documents)]


def _expected(vocab: str, files: list[str], split: str) -> list[list[int]]:
    """SentencePiece ids of the spoken-or-written form of each document of `split`, in order."""
    processor = spm.SentencePieceProcessor(model_file=vocab)
    out = []
    for text in corpus_files.iter_documents(files):
        if bool(is_validation(tf.constant(text), 20)) != (split == "validation"):
            continue
        shown = maybe_spoken(tf.constant(text.strip()), 0.7).numpy().decode()
        out.append(processor.encode(shown))
    return out


def test_prepared_tokens_are_the_pipelines(prepared, corpus, demo_vocabulary):
    out, manifest = prepared
    assert sorted(manifest["units"]) == ["local_de", "local_en", "local_fr"]
    for language in ("en", "fr"):
        files = sorted(str(p) for p in pathlib.Path(corpus, language).iterdir())
        for split in ("train", "validation"):
            got = _documents(out, manifest, f"local_{language}", split)
            want = _expected(demo_vocabulary, files, split)
            if len(files) == 1:  # one file: the file's order
                assert got == want
            else:  # two files are read interleaved
                assert sorted(got) == sorted(want)
    total = sum(len(_documents(out, manifest, "local_en", s)) for s in ("train", "validation"))
    assert total == 30
    train = manifest["units"]["local_fr"]["splits"]["train"]
    assert len(train["parts"]) == -(-train["documents"] // 7)  # 7 documents per part
    assert manifest["sources"] == sorted(manifest["sources"], key=lambda s: s["path"])
    assert {s["path"] for s in manifest["sources"]} >= set(files)


def test_damaged_input_is_counted_and_named(prepared):
    _, manifest = prepared
    counters = manifest["counters"]
    assert counters["invalid_utf8_documents"] == 1
    assert counters["invalid_jsonl_records"] == 1
    assert counters["long_documents_split"] == 1
    assert counters["bad_files"] == 1
    [(path, why)] = manifest["bad_files"].items()
    assert path.endswith("de/cut.txt.gz") and "truncated" in why
    prepared_documents = sum(
        split["documents"]
        for unit in manifest["units"].values()
        for split in unit["splits"].values()
    )
    pieces = -(-len(LONG) // MAX_BYTES)  # counted as one record before it was cut
    assert counters["documents"] == prepared_documents - (pieces - 1)
    assert manifest["preparation"]["max_document_bytes"] == MAX_BYTES


def _stamp(root: pathlib.Path) -> dict[str, int]:
    """Set every file's mtime to a fixed past time; returns {relative path: mtime_ns}."""
    stamps = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            os.utime(path, ns=(10**18, 10**18))
            stamps[str(path.relative_to(root))] = 10**18
    return stamps


def _mtimes(root: pathlib.Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rerun_rewrites_nothing_and_resumes_what_is_unfinished(tmp_path, demo_vocabulary):
    data = write_corpus(str(tmp_path / "data"), languages=("en",), documents=40, files=2)
    out = tmp_path / "out"
    config = _config(demo_vocabulary)

    def run() -> dict:
        return preparation.prepare(
            LOCAL, data_dir=data, config=config, out=str(out), documents_per_part=8, progress=False
        )

    first = run()
    stamps = _stamp(out)
    assert run() == first and _mtimes(out) == stamps  # nothing rewritten

    (out / "local_en/validation/done.json").unlink()  # interrupted before validation finished
    assert run()["units"] == first["units"]
    changed = {k for k, v in _mtimes(out).items() if v != stamps.get(k)}
    assert changed and all(k.startswith("local_en/validation/") for k in changed)

    stamps = _stamp(out)
    for path in (out / "local_en/train").iterdir():  # interrupted in train, before the manifest
        path.unlink()
    (out / "manifest.json").unlink()
    assert run()["units"] == first["units"]
    assert all(v == stamps[k] for k, v in _mtimes(out).items() if "validation" in k)

    with open(os.path.join(data, "en", "part0.txt"), "a") as f:  # a changed input is redone
        f.write("\nOne more document at the end.\n")
    stamps = _stamp(out)
    again = run()
    assert sum(s["documents"] for s in again["units"]["local_en"]["splits"].values()) == 41
    assert _mtimes(out)["local_en/train/done.json"] != stamps["local_en/train/done.json"]


def test_check_prepared_returns_the_registrys_recipe_and_refuses_other_settings(
    prepared, corpus, demo_vocabulary, tmp_path
):
    out, manifest = prepared
    config = _config(demo_vocabulary)
    checked, recipe = preparation.check_prepared(out, LOCAL, config)
    assert checked == read_manifest(out)
    tasks.register_local_mixture(corpus, config)
    rates = tasks.mixture_rates(LOCAL)
    assert {name: task["rate"] for name, task in recipe["tasks"].items()} == pytest.approx(rates)
    assert recipe["tasks"]["alexatm_local_de_clm"]["unit"] == "local_de"
    ids = tasks.read_special_ids(demo_vocabulary)
    assert recipe["special_ids"]["doc"] == ids.doc and recipe["vocab_size"] == ids.vocab_size

    assert checked["tasks"] == recipe  # the task definitions it was prepared under
    # Rates are read-time settings: another CLM share reads the same data with its own rates.
    _, other_rates = preparation.check_prepared(
        out, LOCAL, dataclasses.replace(config, clm_share=0.3)
    )
    clm = sum(t["rate"] for t in other_rates["tasks"].values() if t["objective"] == "clm")
    assert clm == pytest.approx(0.3)

    for field, value in (("spoken_share", 0.5), ("max_document_bytes", 4096)):
        with pytest.raises(ValueError, match=rf"{field}: saved .*, now {value}.*alexatm-data"):
            preparation.check_prepared(out, LOCAL, dataclasses.replace(config, **{field: value}))
    other = tmp_path / "other.model"  # the same pieces plus an unknown protobuf field
    other.write_bytes(pathlib.Path(demo_vocabulary).read_bytes() + b"\xa0\x06\x01")
    with pytest.raises(ValueError, match="vocabulary_sha256: saved"):
        preparation.check_prepared(out, LOCAL, dataclasses.replace(config, vocab_path=str(other)))
    with pytest.raises(ValueError, match="prepared for alexatm_pretrain_local, not alexatm_pre"):
        preparation.check_prepared(out, tasks.PRETRAIN_MIXTURE, config)


@pytest.fixture
def clean_gin():
    """Start from no gin bindings, unlocked (an earlier test may have finalised gin's config),
    and forget those a CLI call parsed into this process."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def _exit_code(argv: list[str]) -> int:
    """`alexatm-data argv`'s exit status (argparse refusals exit through SystemExit)."""
    try:
        return data_cli.main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _one_error_line(capsys) -> str:
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("alexatm-")]
    return line


def test_cli_prepare_workers_finalize_info_and_exit_codes(
    tmp_path, corpus, demo_vocabulary, prepared, capsys, clean_gin
):
    common = ["--data_dir", corpus, "--vocab", demo_vocabulary, "--no_progress"]
    common += ["--gin_param", "MixtureConfig.languages=('en', 'fr', 'de')"]
    common += [f"--gin_param=MixtureConfig.max_document_bytes={MAX_BYTES}"]
    out = str(tmp_path / "sharded")
    for worker in (0, 1):
        args = ["prepare", *common, "--out", out, "--num_workers", "2", "--worker_index"]
        assert data_cli.main([*args, str(worker), "--documents_per_part", "5"]) == 0
    assert "--finalize" in capsys.readouterr().out
    assert data_cli.main(["prepare", *common, "--out", out, "--finalize"]) == 0
    printed = capsys.readouterr().out
    assert f"prepared data: {out} in" in printed and "damaged file skipped:" in printed
    sharded, single = read_manifest(out), prepared[1]
    assert sharded["counters"] == single["counters"]
    assert sharded["bad_files"] == single["bad_files"]
    for unit in single["units"]:
        for split in ("train", "validation"):
            got = _documents(out, sharded, unit, split)
            assert sorted(got) == sorted(_documents(prepared[0], single, unit, split))

    assert data_cli.main(["info", out, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["units"]["local_fr"]["train"]["tokens"]
        == (single["units"]["local_fr"]["splits"]["train"]["tokens"])
    )
    assert summary["counters"]["bad_files"] == 1
    assert data_cli.main(["info", out]) == 0
    assert "local_de" in capsys.readouterr().out

    assert _exit_code(["prepare", "--out", out, "--documents_per_part", "0"]) == 2
    assert "--documents_per_part must be >= 1" in _one_error_line(capsys)
    assert _exit_code(["prepare", *common, "--out", out, "--mixture", "alexatm_pretrain"]) == 2
    assert "prepare reads local files" in _one_error_line(capsys)
    assert data_cli.main(["info", str(tmp_path)]) == 2
    assert "manifest.json is missing" in _one_error_line(capsys)
    empty = tmp_path / "empty"
    (empty / "xx").mkdir(parents=True)
    args = ["prepare", "--data_dir", str(empty), "--vocab", demo_vocabulary]
    assert data_cli.main([*args, "--out", str(tmp_path / "o")]) == 1
    assert "no usable language directory" in _one_error_line(capsys)
    unfinished = str(tmp_path / "unfinished")
    args = ["prepare", *common, "--out", unfinished, "--splits", "train"]
    assert data_cli.main([*args, "--num_workers", "3"]) == 0
    assert data_cli.main(["prepare", *common, "--out", unfinished, "--finalize"]) == 1
    assert "(worker 1, 2)" in _one_error_line(capsys)


def test_prepare_writes_to_gcs(gcs_server, corpus, demo_vocabulary, prepared, tmp_path):
    bucket = "alexatm-prepared"
    gcs_server.create_bucket(bucket)
    data = tmp_path / "data"
    shutil.copytree(pathlib.Path(corpus, "fr"), data / "fr")
    command = [
        sys.executable,
        "-m",
        "alexatm_jax.cli.data",
        "prepare",
        "--data_dir",
        str(data),
        "--vocab",
        demo_vocabulary,
        "--gin_param",
        f"MixtureConfig.max_document_bytes={MAX_BYTES}",
        "--out",
        f"gs://{bucket}/prepared",
        "--documents_per_part",
        "7",
        "--no_progress",
    ]
    env = {**os.environ, **gcs_server.environment(), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"prepared data: gs://{bucket}/prepared" in done.stdout
    manifest = json.loads(gcs_server.download(bucket, "prepared/manifest.json"))
    assert sorted(manifest["units"]) == ["local_fr"]
    local_out, local = prepared
    for split in ("train", "validation"):
        remote_parts = manifest["units"]["local_fr"]["splits"][split]["parts"]
        tokens = b"".join(
            gcs_server.download(bucket, f"prepared/{p['tokens_path']}") for p in remote_parts
        )
        local_parts = local["units"]["local_fr"]["splits"][split]["parts"]
        want = b"".join(pathlib.Path(local_out, p["tokens_path"]).read_bytes() for p in local_parts)
        assert np.array_equal(np.frombuffer(tokens, "<u4"), np.frombuffer(want, "<u4"))

    # The reader reads gs:// by byte range: the rows equal those of the local copy.
    inspect = [
        sys.executable,
        "-m",
        "alexatm_jax.cli.inspect_mixture",
        "--mixture",
        LOCAL,
        "--prepared",
        f"gs://{bucket}/prepared",
        "--vocab",
        demo_vocabulary,
        "--gin_param",
        f"MixtureConfig.max_document_bytes={MAX_BYTES}",
        "--gin_param",
        "MixtureConfig.languages=('fr',)",
        "--inputs_length",
        "32",
        "--targets_length",
        "32",
        "-n",
        "12",
        "--format",
        "json",
    ]
    done = subprocess.run(inspect, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    remote = [json.loads(line) for line in done.stdout.splitlines()[:-1]]
    config = _config(demo_vocabulary, languages=("fr",))
    checked, recipe = preparation.check_prepared(local_out, LOCAL, config)
    rows = PreparedRows(
        local_out,
        checked,
        recipe,
        split="train",
        sequence_length={"inputs": 32, "targets": 32},
        seed=0,
    )
    examples = [ex for g in range(12) for ex in rows.examples(g)][:12]
    assert [(r["inputs"], r["targets"]) for r in remote] == [
        (ex.inputs.tolist(), ex.targets.tolist()) for ex in examples
    ]


def _train_config(prepared_dir: str, vocab: str, model_dir: str, steps: int):
    from tiny_config import tiny_model_config

    from alexatm_jax.partitioning import MeshConfig
    from alexatm_jax.training.config import TrainConfig

    return TrainConfig(
        model_config=tiny_model_config(vocab_size=4096),
        train_steps=steps,
        batch_size=4,
        model_dir=model_dir,
        sequence_length={"inputs": 32, "targets": 32},
        mesh_config=MeshConfig(),
        rules="data_parallel",
        data_source="prepared",
        prepared_data=prepared_dir,
        vocab_path=vocab,
        checkpoint_period=2,
        async_checkpointing=False,
        log_every=1,
        progress_bar=False,
        show_sharding_table=False,
    )


def _losses(model_dir: str) -> dict[int, float]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_training_on_prepared_data_resumes_exactly_and_refuses_other_settings(
    prepared, demo_vocabulary, clean_gin, tmp_path
):
    """The trainer reads prepared data (train.data_source='prepared'): a run restored from the
    step-2 checkpoint of a 4-step run gives its losses at steps 3 and 4, bit for bit; a registry
    that no longer matches the prepared data is refused before MODEL_DIR exists."""
    import gin
    from alexatm_jax.training.config import InvalidTrainArguments
    from alexatm_jax.training.trainer import train

    out, _ = prepared
    gin.parse_config(
        [
            f"MixtureConfig.max_document_bytes = {MAX_BYTES}",
            "MixtureConfig.languages = ('en', 'fr', 'de')",
        ]
    )
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    train(_train_config(out, demo_vocabulary, whole, 4))
    shutil.copytree(
        os.path.join(whole, "checkpoints", "2"), os.path.join(split, "checkpoints", "2")
    )
    train(_train_config(out, demo_vocabulary, split, 4))
    expected, resumed = _losses(whole), _losses(split)
    assert sorted(expected) == [1, 2, 3, 4]
    assert sorted(resumed) == [3, 4]
    assert [resumed[s] for s in (3, 4)] == [expected[s] for s in (3, 4)]

    gin.parse_config(["MixtureConfig.spoken_share = 0.5"])
    refused = str(tmp_path / "refused")
    with pytest.raises(InvalidTrainArguments, match="spoken_share: saved 0.7, now 0.5"):
        train(_train_config(out, demo_vocabulary, refused, 2))
    assert not os.path.exists(refused)
