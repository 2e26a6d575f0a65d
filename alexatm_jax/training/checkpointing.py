"""Orbax checkpoints of a training run: the TrainState, the data-iterator position and digests.

Each checkpoint `MODEL_DIR/checkpoints/<step>/` holds three items: `state` (the sharded TrainState,
written by every process), `progress` (a small JSON dict written by the primary process: the
data-iterator position, see `alexatm_jax.data`, and run counters such as skipped steps) and
`digests` (JSON: a content digest of every array of `state` and of `progress`, see
`alexatm_jax.checkpoints.digests`; computed on the devices, nothing is gathered).

Guarantees (Orbax 0.12 semantics, checked in its source and in tests/test_trainer_checkpoints.py):
- A step directory appears under its final name only after all its files are written (Orbax
  writes to `<step>.orbax-checkpoint-tmp-*` and renames on commit); a job killed mid-save leaves
  only a temporary directory, which restore ignores and the next launch cleans up.
- With `keep=N`, the checkpoints to drop are deleted by the save's finalize step, which runs only
  after the new checkpoint committed; a failed save deletes nothing. So the last good checkpoint
  is never removed before a newer one is complete, and N finalized checkpoints stay on disk, plus
  the one marked with `protect(step)` (the trainer's newest checkpoint from before the run's first
  non-finite step), which is never deleted.
- A background save that fails is reported by the next `poll()` (the trainer polls every step),
  not only by the next save.
- Restore tries the newest checkpoint first. One that fails to read (truncated or corrupt files:
  OCDBT checksums report DATA_LOSS) or whose content differs from its digests (flipped bits,
  which OCDBT does not notice) is moved to `MODEL_DIR/checkpoints_unreadable/` with a warning
  naming the array, and the previous one is tried. A checkpoint written before digests existed
  restores with an "unverified" warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from alexatm_jax.checkpoints import digests
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
DIGESTS_ITEM = "digests"


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose TrainState layout differs from the configured one."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions, I/O); the message names the step."""


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """A restored training checkpoint: its step, TrainState, progress JSON and whether its
    content was checked against recorded digests (False for checkpoints older than digests)."""

    step: int
    state: Any
    progress: dict
    verified: bool = True


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {name: tuple(leaf.shape) for name, leaf in digests.named_leaves(tree).items()}


def _with_stored_dtypes(abstract_state: Any, stored: dict[str, Any]) -> Any:
    """`abstract_state` with each leaf's dtype replaced by the dtype it was saved in (so the
    digests compare what was written; the caller casts afterwards)."""

    def leaf(path: tuple, spec: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        dtype = getattr(stored.get(digests.dotted_name(path)), "dtype", None) or spec.dtype
        return jax.ShapeDtypeStruct(spec.shape, dtype, sharding=spec.sharding)

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)


def _layout_differences(saved: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
    problems = [f"missing in checkpoint: {k}" for k in sorted(set(expected) - set(saved))]
    problems += [f"not in configured state: {k}" for k in sorted(set(saved) - set(expected))]
    problems += [
        f"{k}: checkpoint shape {saved[k]} vs configured {expected[k]}"
        for k in sorted(set(saved) & set(expected))
        if saved[k] != expected[k]
    ]
    return problems


def _warn_about_restore(step_dir: str, dropped: list[str], *, verified: bool) -> None:
    """Log what a restore of `step_dir` left unread (`dropped`) and whether it was verified."""
    if dropped:
        logger.warning(
            "checkpoint %s holds %d optimizer arrays this run does not keep (%s): "
            "left unread, since their parameters are no longer trained",
            step_dir,
            len(dropped),
            ", ".join(dropped[:4]) + (" ..." if len(dropped) > 4 else ""),
        )
    if not verified:
        logger.warning(
            "checkpoint %s has no digests (it was written before checkpoints "
            "recorded them): restored unverified",
            step_dir,
        )


def _manager_item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        STATE_ITEM: ocp.StandardCheckpointHandler(),
        PROGRESS_ITEM: ocp.JsonCheckpointHandler(),
        DIGESTS_ITEM: ocp.JsonCheckpointHandler(),
    }


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def read_digests(step_dir: str) -> dict | None:
    """The digest record of checkpoint `step_dir` (`.../checkpoints/<step>`), or None when it
    was written before checkpoints recorded digests. Raises when the record is unreadable."""
    item = as_path(step_dir) / DIGESTS_ITEM
    if not item.exists():
        return None
    return dict(
        ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(item, args=ocp.args.JsonRestore())
    )


@dataclasses.dataclass
class _KeepProtected:
    """Orbax preservation policy: never delete the step the checkpointer protects."""

    checkpointer: TrainingCheckpointer

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        return [info.step == self.checkpointer.protected_step for info in checkpoints]


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
        self.protected_step: int | None = None
        self.quarantined: list[str] = []  # one line per checkpoint moved aside by this object
        self._saving_step: int | None = None
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(n=keep), _KeepProtected(self)]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            as_path(self.directory), item_handlers=_manager_item_handlers(), options=options
        )

    def steps(self) -> list[int]:
        """The steps of the finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def protect(self, step: int | None) -> None:
        """Never delete checkpoint `step` (None: protect nothing). One step at a time."""
        self.protected_step = step

    def save(self, step: int, state: Any, progress: dict) -> None:
        """Start saving `state` and the JSON dict `progress` as checkpoint `step`, with the
        digests of both.

        Returns once the arrays are copied off the devices; the files are written in the
        background. Waits for the previous save first (raising CheckpointSaveError if it failed).
        """
        record = digests.manifest(digests.tree_digests(state), **{PROGRESS_ITEM: progress})
        self.wait_until_finished()
        self._saving_step = step
        try:
            self._manager.save(
                step,
                force=True,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(state),
                        PROGRESS_ITEM: ocp.args.JsonSave(progress),
                        DIGESTS_ITEM: ocp.args.JsonSave(record),
                    }
                ),
            )
        except Exception as error:
            raise self._save_error(error) from error

    def _save_error(self, error: BaseException) -> CheckpointSaveError:
        step, self._saving_step = self._saving_step, None
        text = str(error)
        reason = (
            "disk full: No space left on device"
            if "No space left on device" in text or "[Errno 28]" in text
            else _first_line(error)
        )
        on_disk = sorted(ocp.step.checkpoint_steps(as_path(self.directory)))
        return CheckpointSaveError(
            f"saving checkpoint step {step} in {self.directory} failed ({reason}); the previous "
            f"checkpoints are intact: {on_disk or 'none'}"
        )

    def poll(self) -> None:
        """Raise CheckpointSaveError if a background save has failed; never blocks on a save
        that is still running."""
        if self._saving_step is not None and not self._manager.is_saving_in_progress():
            self.wait_until_finished()

    def restore_latest(
        self, abstract_state: Any, *, droppable: Callable[[str], bool] = lambda name: False
    ) -> RestoredCheckpoint | None:
        """Restore the newest intact checkpoint into the shapes/shardings of `abstract_state`.

        `abstract_state` is a TrainState of `jax.ShapeDtypeStruct`s carrying shardings. Returns
        None when no checkpoint is intact (`quarantined` then says what was found). Unreadable
        checkpoints and those whose content differs from their digests are moved aside; a readable
        one with another state layout (e.g. the optimizer changed) raises
        IncompatibleCheckpointError and touches nothing. Saved arrays that `abstract_state` lacks
        and whose dotted name `droppable` accepts (the optimizer statistics of a parameter that
        is no longer trained) are left unread, with a warning naming them.
        """
        expected = _leaf_shapes(abstract_state)
        candidates = list(reversed(self.steps()))
        for position, step in enumerate(candidates):
            older = candidates[position + 1 :]
            step_dir = os.path.join(self.directory, str(step))
            try:
                metadata = digests.named_leaves(self._manager.item_metadata(step)[STATE_ITEM].tree)
                dropped = sorted(name for name in metadata.keys() - expected if droppable(name))
                saved = {
                    name: tuple(leaf.shape)
                    for name, leaf in metadata.items()
                    if name not in dropped
                }
                recorded = read_digests(step_dir)
                if recorded is not None:
                    digests.check_manifest(recorded, step_dir)
            except Exception as error:  # unreadable metadata: the checkpoint is unusable
                self._quarantine(step, _first_line(error), older)
                continue
            problems = _layout_differences(saved, expected)
            if (
                problems
                and recorded is not None
                and _layout_differences(
                    {
                        k: tuple(v["shape"])
                        for k, v in recorded["arrays"].items()
                        if k not in dropped
                    },
                    expected,
                )
                == []
            ):
                self._quarantine(
                    step,
                    "its metadata contradicts its digest record (" + "; ".join(problems[:3]) + ")",
                    older,
                )
                continue
            if problems:
                raise IncompatibleCheckpointError(
                    f"checkpoint {step_dir} does not match the configured training "
                    f"state ({len(problems)} differences; first: {'; '.join(problems[:5])}). The "
                    "optimizer or model layout changed since it was written: restore the "
                    "original configuration, or start a new MODEL_DIR with train.init_from "
                    "pointing at this run to reuse its parameters."
                )
            try:
                state, progress = self._restore_verified(
                    step, step_dir, abstract_state, metadata, recorded, partial=bool(dropped)
                )
            except Exception as error:  # any read failure or mismatch: try an older one
                self._quarantine(step, _first_line(error), older)
                continue
            _warn_about_restore(step_dir, dropped, verified=recorded is not None)
            return RestoredCheckpoint(
                step=step, state=state, progress=progress, verified=recorded is not None
            )
        return None

    def _restore_verified(
        self,
        step: int,
        step_dir: str,
        abstract_state: Any,
        metadata: Any,
        recorded: Any,
        *,
        partial: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """(state in `abstract_state`'s dtypes, progress) of checkpoint `step`, compared with its
        digest record when it has one; raises on any read failure or mismatch. `partial` reads
        only the arrays `abstract_state` has (the checkpoint may hold more)."""
        target = _with_stored_dtypes(abstract_state, metadata)
        if partial:
            state = read_state_arrays(step_dir, target)
            progress = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
                as_path(step_dir) / PROGRESS_ITEM, args=ocp.args.JsonRestore()
            )
        else:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardRestore(target),
                        PROGRESS_ITEM: ocp.args.JsonRestore(),
                    }
                ),
            )
            state, progress = restored[STATE_ITEM], restored[PROGRESS_ITEM]
        progress = dict(progress)
        if recorded is not None:
            digests.compare(
                digests.tree_digests(state),
                recorded,
                step_dir,
                partial=partial,
                **{PROGRESS_ITEM: progress},
            )
        state = jax.tree.map(
            lambda x, spec: x if x.dtype == spec.dtype else x.astype(spec.dtype),
            state,
            abstract_state,
        )
        return state, progress

    def _quarantine(self, step: int, reason: str, older: Sequence[int]) -> None:
        """Move checkpoint `step` out of the managed directory (so the step can be saved again)."""
        source = os.path.join(self.directory, str(step))
        target_root = os.path.join(absolute(self.model_dir), UNREADABLE_CHECKPOINTS_DIR)
        target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        next_step = (
            f"falling back to the previous checkpoint (step {older[0]})"
            if older
            else "no older checkpoint is left"
        )
        logger.warning(
            "checkpoint %s could not be restored (%s); moving it to %s; %s",
            source,
            reason,
            target,
            next_step,
        )
        self.quarantined.append(f"step {step}: {reason}")
        if jax.process_index() == 0:
            as_path(target_root).mkdir(parents=True, exist_ok=True)
            as_path(source).rename(as_path(target))
        _sync_processes(f"alexatm_quarantine_{step}")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Block until the in-flight save (if any) has committed; raises CheckpointSaveError if
        it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._save_error(error) from error
        self._saving_step = None

    def close(self) -> None:
        """Wait for the in-flight save and release Orbax's background resources; raises
        CheckpointSaveError if that save failed (the resources are released either way)."""
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()


def read_state_arrays(step_dir: str, target: Any) -> Any:
    """The arrays of `target` (a tree of ShapeDtypeStructs with shardings, a part of the saved
    train state) read from checkpoint `step_dir`; arrays the checkpoint has beyond them are left
    unread."""
    return ocp.PyTreeCheckpointer().restore(
        as_path(step_dir) / STATE_ITEM,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )


def restore_params_from_model_dir(
    model_dir: str,
    step: int | None = None,
    *,
    shardings: Any = None,
) -> tuple[Any, ModelConfig, int]:
    """Read only the parameters of a training checkpoint in `model_dir`.

    `step=None` takes the newest finalized checkpoint. `shardings` is a tree of
    `jax.sharding.Sharding` matching the parameters (default: all on the first local device).
    Returns (params, the run's ModelConfig from model_config.json, the step restored). The
    parameters are checked against the checkpoint's digests (DigestMismatchError names the
    arrays that differ; checkpoints older than digests load with an "unverified" warning).
    """
    model_config = read_model_config(model_dir)
    checkpoints_dir = os.path.join(absolute(model_dir), CHECKPOINTS_DIR)
    steps = (
        sorted(ocp.step.checkpoint_steps(as_path(checkpoints_dir)))
        if as_path(checkpoints_dir).is_dir()
        else []
    )
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
    target = {
        "params": jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            shapes,
            shardings,
        )
    }
    step_dir = os.path.join(checkpoints_dir, str(step))
    restored = read_state_arrays(step_dir, target)
    verify_params(step_dir, restored)
    return restored["params"], model_config, step


def verify_params(step_dir: str, restored: dict) -> bool:
    """Check `{"params": tree}` read from checkpoint `step_dir` against its digests. Returns
    True when verified, False (with a warning) for a checkpoint written before digests; raises
    DigestMismatchError naming the arrays that differ, or when the record is damaged."""
    try:
        recorded = read_digests(step_dir)
    except Exception as error:
        raise digests.DigestMismatchError(
            f"{step_dir}: its digest record is unreadable ({_first_line(error)})"
        ) from error
    if recorded is None:
        logger.warning(
            "checkpoint %s has no digests (it was written before checkpoints recorded "
            "them): its parameters are loaded unverified",
            step_dir,
        )
        return False
    digests.compare(digests.tree_digests(restored), recorded, step_dir, partial=True)
    return True
