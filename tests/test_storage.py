"""Local-or-remote MODEL_DIR paths: URLs are never turned into local paths, and a remote
MODEL_DIR gets its metrics.jsonl / TensorBoard files uploaded from a local staging directory.

Here the remote code path is forced onto a local directory by monkeypatching `is_remote` in the
metrics writer (epath handles local and gs:// the same way); tests/test_gcs.py runs the CLIs
against a GCS server.
"""

from __future__ import annotations

import os

import pytest
from tiny_config import TINY_MODEL_CONFIG

from alexatm_jax import storage
from alexatm_jax.cli.train import parse_args
from alexatm_jax.partitioning import MeshConfig
from alexatm_jax.training import metrics_writer
from alexatm_jax.training.metrics_writer import MetricsWriter, read_metrics
from alexatm_jax.training.trainer import TrainConfig, train

TINY = TINY_MODEL_CONFIG


def test_absolute_keeps_urls_and_absolutises_local_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("gs://bucket/run") == "gs://bucket/run"
    assert storage.absolute("s3://bucket/a/b") == "s3://bucket/a/b"
    assert storage.absolute("run") == str(tmp_path / "run")
    assert storage.absolute("~/run") == os.path.join(os.path.expanduser("~"), "run")
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/gs:/b/x")
    assert not storage.is_remote("run")
    assert str(storage.as_path("gs://b/x") / "checkpoints") == "gs://b/x/checkpoints"


def test_cli_passes_a_gs_model_dir_through_unchanged():
    _, bindings = parse_args(
        ["--gin_file=gin/experiments/smoke_cpu.gin", "--model_dir=gs://bucket/alexatm/run1"]
    )
    assert bindings[-1] == "MODEL_DIR = 'gs://bucket/alexatm/run1'"


def _uploads(monkeypatch) -> list[str]:
    """Force the remote (staged) path in the metrics writer; returns the list of upload targets."""
    monkeypatch.setattr(metrics_writer, "is_remote", lambda path: True)
    targets: list[str] = []
    original = metrics_writer.copy_file

    def recording_copy(source, target):
        targets.append(str(target))
        original(source, target)

    monkeypatch.setattr(metrics_writer, "copy_file", recording_copy)
    return targets


def test_remote_metrics_are_staged_uploaded_and_resumed(monkeypatch, tmp_path):
    targets = _uploads(monkeypatch)
    remote = tmp_path / "remote"
    remote.mkdir()
    writer = MetricsWriter(str(remote), enabled=True)
    staging = writer._staging_dir
    assert staging is not None and not str(staging).startswith(str(remote))
    for step, loss in ((1, 1.0), (2, 0.5), (3, 0.25)):
        writer.write(step, {"loss": loss})
    assert not (remote / "metrics.jsonl").exists()  # nothing reaches the model dir before sync
    assert writer.sync() >= 2  # metrics.jsonl + a TensorBoard event file
    assert [r["step"] for r in read_metrics(str(remote / "metrics.jsonl"))] == [1, 2, 3]
    assert any(name.startswith("events.") for name in os.listdir(remote / "tensorboard"))
    writer.sync()
    assert targets.count(str(remote / "metrics.jsonl")) == 1  # unchanged: not uploaded again
    writer.close()
    assert not os.path.exists(staging)

    targets.clear()
    resumed = MetricsWriter(str(remote), enabled=True, resume_step=2)  # downloads, truncates
    resumed.write(3, {"loss": 0.125})
    resumed.close()
    assert [r["loss"] for r in read_metrics(str(remote / "metrics.jsonl"))] == [1.0, 0.5, 0.125]
    assert str(remote / "metrics.jsonl") in targets


def test_trainer_uploads_staged_metrics_at_every_checkpoint(monkeypatch, tmp_path):
    targets = _uploads(monkeypatch)
    model_dir = tmp_path / "run"
    result = train(
        TrainConfig(
            model_config=TINY,
            model_dir=str(model_dir),
            train_steps=3,
            batch_size=2,
            sequence_length={"inputs": 8, "targets": 8},
            mesh_config=MeshConfig(),
            rules="data_parallel",
            checkpoint_period=1,
            keep_checkpoints=1,
            log_every=1,
            data_source="synthetic",
            progress_bar=False,
            async_checkpointing=False,
        )
    )
    assert result.model_dir == str(model_dir) and result.last_checkpoint_step == 3
    jsonl = str(model_dir / "metrics.jsonl")
    assert targets.count(jsonl) == 3  # one upload per checkpoint (steps 1, 2, 3)
    assert [r["step"] for r in read_metrics(jsonl)] == [1, 2, 3]
    events = [t for t in targets if os.path.basename(t).startswith("events.")]
    assert events and all(t.startswith(str(model_dir / "tensorboard")) for t in events)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
