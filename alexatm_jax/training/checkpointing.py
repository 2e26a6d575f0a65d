"""Orbax checkpoints of a training run: the TrainState and the data-iterator position together.

Each checkpoint `MODEL_DIR/checkpoints/<step>/` holds two items: `state` (the sharded TrainState,
written by every process) and `progress` (a small JSON dict written by the primary process: the
data-iterator position, see `alexatm_jax.data`, and run counters such as skipped steps).

Guarantees (Orbax 0.12 semantics, checked in its source and in tests/test_trainer_checkpoints.py):
- A step directory appears under its final name only after all its files are written (Orbax
  writes to `<step>.orbax-checkpoint-tmp-*` and renames on commit); a job killed mid-save leaves
  only a temporary directory, which restore ignores and the next launch cleans up.
- With `keep=N`, the checkpoints to drop are deleted by the save's finalize step, which runs only
  after the new checkpoint committed; a failed save deletes nothing. So the last good checkpoint
  is never removed before a newer one is complete, and N finalized checkpoints stay on disk.
- Restore tries the newest checkpoint first; one that fails to read (truncated or corrupt files:
  OCDBT checksums report DATA_LOSS) is moved to `MODEL_DIR/checkpoints_unreadable/` with a warning
  and the previous one is tried.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import param_shapes
from alexatm_jax.storage import absolute, as_path
from alexatm_jax.training.model_dir import (
    CHECKPOINTS_DIR,
    UNREADABLE_CHECKPOINTS_DIR,
    read_model_config,
)

logger = logging.getLogger(__name__)

STATE_ITEM = "state"
PROGRESS_ITEM = "progress"


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose TrainState layout differs from the configured one."""


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """A restored training checkpoint: its step, TrainState and progress JSON."""

    step: int
    state: Any
    progress: dict


def _dotted_name(path: tuple) -> str:
    """Orbax's name of a leaf: its key path joined by dots (e.g. `opt_state.1.0.mu.encoder`)."""
    parts = []
    for key in path:
        if isinstance(key, DictKey):
            parts.append(str(key.key))
        elif isinstance(key, GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return ".".join(parts)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {_dotted_name(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layout_differences(saved: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
    problems = [f"missing in checkpoint: {k}" for k in sorted(set(expected) - set(saved))]
    problems += [f"not in configured state: {k}" for k in sorted(set(saved) - set(expected))]
    problems += [f"{k}: checkpoint shape {saved[k]} vs configured {expected[k]}"
                 for k in sorted(set(saved) & set(expected)) if saved[k] != expected[k]]
    return problems


def _manager_item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {STATE_ITEM: ocp.StandardCheckpointHandler(),
            PROGRESS_ITEM: ocp.JsonCheckpointHandler()}


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class TrainingCheckpointer:
    """Saves and restores (TrainState, progress JSON) under `MODEL_DIR/checkpoints`.

    Saving is asynchronous when `async_save` (the device-to-host copy blocks, the file writes do
    not); at most one save is in flight, and `close()` waits for it.
    """

    def __init__(self, model_dir: str, *, keep: int, async_save: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.model_dir = model_dir
        self.directory = os.path.join(absolute(model_dir), CHECKPOINTS_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            as_path(self.directory), item_handlers=_manager_item_handlers(), options=options)

    def steps(self) -> list[int]:
        """The steps of the finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, progress: dict) -> None:
        """Start saving `state` and the JSON dict `progress` as checkpoint `step`.

        Returns once the arrays are copied off the devices; the files are written in the
        background. Waits for the previous save first.
        """
        self._manager.save(
            step, force=True,
            args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardSave(state),
                PROGRESS_ITEM: ocp.args.JsonSave(progress),
            }))

    def restore_latest(self, abstract_state: Any) -> RestoredCheckpoint | None:
        """Restore the newest readable checkpoint into the shapes/shardings of `abstract_state`.

        `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s carrying shardings. Returns
        None when there is no readable checkpoint. Unreadable checkpoints are moved aside; a
        readable one with another state layout (e.g. the optimizer changed) raises
        IncompatibleCheckpointError and touches nothing.
        """
        expected = _leaf_shapes(abstract_state)
        for step in reversed(self.steps()):
            try:
                saved = _leaf_shapes(self._manager.item_metadata(step)[STATE_ITEM].tree)
            except Exception as error:  # unreadable metadata: the checkpoint is unusable
                self._quarantine(step, error)
                continue
            problems = _layout_differences(saved, expected)
            if problems:
                raise IncompatibleCheckpointError(
                    f"checkpoint {self.directory}/{step} does not match the configured training "
                    f"state ({len(problems)} differences; first: {'; '.join(problems[:5])}). The "
                    "optimizer or model layout changed since it was written: restore the "
                    "original configuration, or start a new MODEL_DIR with train.init_from "
                    "pointing at this run to reuse its parameters.")
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                    PROGRESS_ITEM: ocp.args.JsonRestore(),
                }))
            except Exception as error:  # any read failure means "unusable": try an older one
                self._quarantine(step, error)
                continue
            return RestoredCheckpoint(step=step, state=restored[STATE_ITEM],
                                      progress=dict(restored[PROGRESS_ITEM]))
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        """Move checkpoint `step` out of the managed directory (so the step can be saved again)."""
        source = os.path.join(self.directory, str(step))
        target_root = os.path.join(absolute(self.model_dir), UNREADABLE_CHECKPOINTS_DIR)
        target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        message = (f"checkpoint {source} could not be restored ({type(error).__name__}: "
                   f"{str(error).splitlines()[0][:300]}); moving it to {target} and falling "
                   "back to the previous checkpoint")
        logger.warning(message)
        if jax.process_index() == 0:
            as_path(target_root).mkdir(parents=True, exist_ok=True)
            as_path(source).rename(as_path(target))
        _sync_processes(f"alexatm_quarantine_{step}")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Block until the in-flight save (if any) has committed; raises if it failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the in-flight save and release Orbax's background resources."""
        self._manager.close()


def restore_params_from_model_dir(
    model_dir: str, step: int | None = None, *, shardings: Any = None,
) -> tuple[Any, ModelConfig, int]:
    """Read only the parameters of a training checkpoint in `model_dir`.

    `step=None` takes the newest finalized checkpoint. `shardings` is a tree of
    `jax.sharding.Sharding` matching the parameters (default: all on the first local device).
    Returns (params, the run's ModelConfig from model_config.json, the step restored).
    """
    model_config = read_model_config(model_dir)
    checkpoints_dir = os.path.join(absolute(model_dir), CHECKPOINTS_DIR)
    steps = (sorted(ocp.step.checkpoint_steps(as_path(checkpoints_dir)))
             if as_path(checkpoints_dir).is_dir() else [])
    if not steps:
        raise FileNotFoundError(f"no finalized checkpoint under {checkpoints_dir}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {checkpoints_dir}; available: {steps}")
    shapes = param_shapes(model_config)
    if shardings is None:
        device = jax.local_devices()[0]
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device), shapes)
    target = {"params": jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes, shardings)}
    restored = ocp.PyTreeCheckpointer().restore(
        as_path(checkpoints_dir) / str(step) / STATE_ITEM,
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    return restored["params"], model_config, step
