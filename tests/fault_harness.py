"""`train()` on synthetic batches with a tiny model: the set-up of tests/test_trainer_faults.py,
and a subprocess entry point whose checkpoint writes can be slowed down (to kill -9 mid-save).

    python tests/fault_harness.py MODEL_DIR '{"train_steps": 12}' [SLOW_SAVE_SECONDS]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tiny_config import TINY_MODEL_CONFIG

from alexatm_jax.partitioning import MeshConfig
from alexatm_jax.training.optimizer import OptimizerConfig
from alexatm_jax.training.trainer import TrainConfig, TrainResult, train

TINY = TINY_MODEL_CONFIG
TRAIN_STEPS = 12


def train_args(model_dir: str, **overrides: Any) -> dict[str, Any]:
    """The arguments of a 12-step synthetic run (the LR schedule spans TRAIN_STEPS, so runs
    with the same `train_steps` have the same losses step for step)."""
    args = dict(
        model_config=TINY,
        model_dir=model_dir,
        train_steps=TRAIN_STEPS,
        batch_size=2,
        sequence_length={"inputs": 8, "targets": 8},
        mesh_config=MeshConfig(),
        rules="data_parallel",
        optimizer_config=OptimizerConfig(learning_rate=1e-2, end_learning_rate=1e-3),
        checkpoint_period=2,
        keep_checkpoints=1,
        log_every=1,
        data_source="synthetic",
        progress_bar=False,
    )
    args.update(overrides)
    return args


def run(model_dir: str, **overrides: Any) -> TrainResult:
    """train() with `train_args(model_dir, **overrides)`."""
    return train(TrainConfig(**train_args(model_dir, **overrides)))


def slow_down_json_writes(seconds: float) -> None:
    """Make every Orbax JSON item write (progress, digests) wait `seconds` in the background."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    handler = json_checkpoint_handler.JsonCheckpointHandler
    original = handler._save_fn

    async def slow(self, item, directory):
        await asyncio.sleep(seconds)
        return await original(self, item, directory)

    handler._save_fn = slow


if __name__ == "__main__":
    if len(sys.argv) > 3:
        slow_down_json_writes(float(sys.argv[3]))
    run(sys.argv[1], **json.loads(sys.argv[2]))
