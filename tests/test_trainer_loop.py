"""The run loop in-process on synthetic batches: non-finite steps, and no TensorFlow in the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_config import TINY_MODEL_CONFIG

from alexatm_jax.partitioning import MeshConfig
from alexatm_jax.training.optimizer import OptimizerConfig
from alexatm_jax.training.trainer import NonFiniteLossError, TrainConfig, train

TINY = TINY_MODEL_CONFIG
# Adam moves every parameter by ~lr on the first step: 1e30 makes the next loss non-finite.
EXPLODING = OptimizerConfig(learning_rate=1e30, end_learning_rate=1e30, clip_norm=0.0)


def run(model_dir: str, **overrides):
    args = dict(
        model_config=TINY,
        model_dir=model_dir,
        train_steps=4,
        batch_size=2,
        sequence_length={"inputs": 8, "targets": 8},
        mesh_config=MeshConfig(),
        rules="data_parallel",
        optimizer_config=EXPLODING,
        checkpoint_period=1,
        keep_checkpoints=5,
        log_every=1,
        data_source="synthetic",
        progress_bar=False,
    )
    args.update(overrides)
    return train(TrainConfig(**args))


def test_non_finite_steps_are_skipped_and_counted_or_stop_the_run(tmp_path):
    result = run(str(tmp_path / "skip"))
    with open(tmp_path / "skip" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["skipped"] for r in records] == [0.0, 1.0, 1.0, 1.0]
    assert records[-1]["skipped_total"] == 3.0 and records[1]["loss"] in ("nan", "inf")
    assert result.final_step == 4 and result.last_checkpoint_step == 4

    with pytest.raises(NonFiniteLossError, match="Last good checkpoint: step 1"):
        run(str(tmp_path / "stop"), nan_policy="stop")
    assert sorted(os.listdir(tmp_path / "stop" / "checkpoints")) == ["1"]


def test_the_training_core_imports_without_tensorflow():
    code = (
        "import sys; import alexatm_jax.training.trainer, alexatm_jax.data, "
        "alexatm_jax.training.checkpointing; "
        "bad = [m for m in ('tensorflow', 'seqio') if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
