"""Small parts of the run loop: metrics files, synthetic batches, CLI arguments, gin layering."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

import gin
from alexatm_jax import gin_registry
from alexatm_jax.cli import train as train_cli
from alexatm_jax.data.synthetic import SyntheticHostBatches
from alexatm_jax.training.metrics_writer import MetricsWriter, read_metrics, truncate_metrics_after

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_MACROS = (
    "MODEL_DIR",
    "TRAIN_STEPS",
    "BATCH_SIZE",
    "CHECKPOINT_PERIOD",
    "EVAL_PERIOD",
    "MESH_DATA",
    "MESH_FSDP",
    "MESH_TENSOR",
)


def test_metrics_writer_appends_records_and_truncates_on_resume(tmp_path):
    writer = MetricsWriter(str(tmp_path), enabled=True)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step, "grad_norm": math.nan})
    writer.close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3] and records[0]["grad_norm"] == "nan"
    resumed = MetricsWriter(str(tmp_path), enabled=True, resume_step=2)
    resumed.write(3, {"loss": 0.25})
    resumed.close()
    assert [r["loss"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1.0, 0.5, 0.25]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert truncate_metrics_after(str(tmp_path / "missing.jsonl"), 5) == 0


def test_disabled_metrics_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_synthetic_batches_are_reproducible_and_resumable():
    kwargs = dict(
        vocab_size=50, sequence_length={"inputs": 6, "targets": 5}, per_host_batch_size=3, seed=7
    )
    source = SyntheticHostBatches(**kwargs)
    first, second = source.next_batch(), source.next_batch()
    resumed = SyntheticHostBatches(
        **kwargs, resume_state=json.loads(json.dumps({"batches_consumed": 1}))
    )
    np.testing.assert_array_equal(
        resumed.next_batch()["encoder_input_tokens"], second["encoder_input_tokens"]
    )
    np.testing.assert_array_equal(
        SyntheticHostBatches(**kwargs).next_batch()["decoder_target_tokens"],
        first["decoder_target_tokens"],
    )
    assert first["encoder_input_tokens"].shape == (3, 6)
    assert first["decoder_input_tokens"][:, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(
        first["decoder_input_tokens"][:, 1:], first["decoder_target_tokens"][:, :-1]
    )
    assert source.state()["batches_consumed"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give at least one --gin_file"),
        (["--gin_file=x.gin", "--bogus"], "unrecognised argument '--bogus'"),
        (["--gin_file=x.gin", "--coordinator_address=h:1"], "need all of --coordinator_address"),
        (["--gin_file=x.gin", "--num_cpu_devices=0"], "--num_cpu_devices must be >= 1"),
    ],
)
def test_train_cli_rejects_bad_arguments(argv, message, capsys, monkeypatch):
    for name in (
        "ALEXATM_COORDINATOR_ADDRESS",
        "ALEXATM_NUM_PROCESSES",
        "ALEXATM_PROCESS_ID",
        "ALEXATM_NUM_CPU_DEVICES",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_train_cli_turns_gin_flags_and_model_dir_into_bindings(tmp_path):
    args, bindings = train_cli.parse_args(
        ["--gin_file=a.gin", "--gin.TRAIN_STEPS=20", "--model_dir", str(tmp_path)]
    )
    assert args.gin_file == ["a.gin"]
    assert bindings == ["TRAIN_STEPS=20", f"MODEL_DIR = {str(tmp_path)!r}"]


@pytest.mark.parametrize("experiment", ["smoke_cpu.gin", "demo.gin"])
def test_experiments_define_the_run_macros_and_honour_overrides(experiment, monkeypatch):
    monkeypatch.chdir("/")  # includes resolve from any working directory
    gin_registry.parse_gin([f"gin/experiments/{experiment}"], ["TRAIN_STEPS = 3", "MESH_FSDP = 2"])
    values = {name: gin.query_parameter(f"%{name}") for name in RUN_MACROS}
    assert values["TRAIN_STEPS"] == 3 and values["MESH_FSDP"] == 2
    assert isinstance(values["MODEL_DIR"], str) and values["BATCH_SIZE"] >= 1
    gin.clear_config()


@pytest.mark.parametrize("mesh", sorted(p.name for p in (REPO / "gin/meshes").glob("*.gin")))
def test_mesh_files_define_sizes_and_rules(mesh):
    gin_registry.parse_gin([f"gin/meshes/{mesh}"])
    for name in ("MESH_DATA", "MESH_FSDP", "MESH_TENSOR", "PARTITION_RULES"):
        gin.query_parameter(f"%{name}")
    gin.clear_config()


def test_a_missing_include_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.gin"
    broken.write_text("include 'gin/runs/no_such_run.gin'\n")
    with pytest.raises(FileNotFoundError, match="no_such_run.gin.*included from"):
        gin_registry.parse_gin([str(broken)])
