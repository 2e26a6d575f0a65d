"""Check checkpoints against their recorded digests without training or building a model.

`verify(path)` accepts a model checkpoint (alexatm-convert's output), a training MODEL_DIR (every
checkpoint in it) or one `MODEL_DIR/checkpoints/<step>`. Arrays are read to host memory a batch
of at most `BATCH_BYTES` at a time (Orbax partial restores), so a checkpoint of any size can be
checked on a small machine; nothing is written. Used by `alexatm-info --verify`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexatm_jax.checkpoints import digests
from alexatm_jax.storage import as_path

BATCH_BYTES = 1 << 28
VERIFIED, UNVERIFIED, CORRUPT = "verified", "unverified", "CORRUPT"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome for one checkpoint: `status` is VERIFIED, UNVERIFIED (written before
    digests) or CORRUPT; `detail` says what was checked or what differs."""

    path: str
    status: str
    detail: str


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


def read_arrays(
    item_dir: str | os.PathLike, batch_bytes: int = BATCH_BYTES
) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of an Orbax PyTree item as {dotted name: numpy array}, a batch at a time."""
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(item_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    leaves = digests.named_leaves(tree)
    batch: list[str] = []
    size = 0
    names = list(leaves)
    for position, name in enumerate(names):
        leaf = leaves[name]
        batch.append(name)
        size += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
        if size < batch_bytes and position + 1 < len(names):
            continue
        chosen = set(batch)

        def pick(path: tuple, leaf: Any, value: Any) -> Any:
            return value(leaf) if digests.dotted_name(path) in chosen else ocp.PLACEHOLDER

        item = jax.tree_util.tree_map_with_path(
            lambda p, leaf: pick(p, leaf, lambda m: np.zeros((), m.dtype)), tree
        )
        restore_args = jax.tree_util.tree_map_with_path(
            lambda p, leaf: pick(p, leaf, lambda _: ocp.RestoreArgs(restore_type=np.ndarray)), tree
        )
        restored = checkpointer.restore(
            item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        )
        yield {
            name: value for name, value in digests.named_leaves(restored).items() if name in chosen
        }
        batch, size = [], 0


def _array_digests(item_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for arrays in read_arrays(item_dir):
        records.update(digests.tree_digests(arrays))  # keys are already the dotted names
    return records


def verify_model_checkpoint(path: str | os.PathLike) -> Verdict:
    """Check a model checkpoint's parameters against its digests.json."""
    from alexatm_jax.checkpoints.model_checkpoint import DIGESTS_FILE, PARAMS_DIR

    path = as_path(path)
    record_path = path / DIGESTS_FILE
    if not record_path.is_file():
        return Verdict(str(path), UNVERIFIED, f"no {DIGESTS_FILE}: written before digests")
    try:
        recorded = json.loads(record_path.read_text())
        actual = _array_digests(path / PARAMS_DIR)
        digests.compare(actual, recorded, str(path))
    except Exception as error:  # noqa: BLE001 - any failure to read or match is the verdict
        return Verdict(str(path), CORRUPT, _first_line(error))
    return Verdict(str(path), VERIFIED, f"{len(actual)} parameter arrays match their digests")


def verify_training_checkpoint(step_dir: str | os.PathLike) -> Verdict:
    """Check one training checkpoint (state arrays and progress JSON) against its digests, and
    say whether it was saved after non-finite steps."""
    from alexatm_jax.training.checkpointing import PROGRESS_ITEM, STATE_ITEM, read_digests

    step_dir = str(step_dir)
    try:
        recorded = read_digests(step_dir)
        progress = dict(
            ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
                as_path(step_dir) / PROGRESS_ITEM, args=ocp.args.JsonRestore()
            )
        )
        if recorded is None:
            return Verdict(
                step_dir, UNVERIFIED, "no digests: written before checkpoints recorded them"
            )
        actual = _array_digests(as_path(step_dir) / STATE_ITEM)
        digests.compare(actual, recorded, step_dir, **{PROGRESS_ITEM: progress})
    except Exception as error:  # noqa: BLE001 - any failure to read or match is the verdict
        return Verdict(step_dir, CORRUPT, _first_line(error))
    skipped = int(progress.get("skipped_steps", 0))
    note = (
        f"; saved after {skipped} non-finite (skipped) step(s), the first at step "
        f"{progress.get('first_skipped_step')}"
        if skipped
        else ""
    )
    return Verdict(
        step_dir, VERIFIED, f"{len(actual)} arrays and the progress JSON match their digests{note}"
    )


def verify(path: str | os.PathLike) -> list[Verdict]:
    """Verdicts for a model checkpoint, a training MODEL_DIR (each of its checkpoints, oldest
    first) or one of its `checkpoints/<step>` directories. Raises FileNotFoundError when
    `path` is none of these."""
    from alexatm_jax.checkpoints.model_checkpoint import is_model_checkpoint
    from alexatm_jax.training.checkpointing import STATE_ITEM
    from alexatm_jax.training.model_dir import CHECKPOINTS_DIR
    from alexatm_jax.training.trained_model import locate_training_checkpoint

    if is_model_checkpoint(path):
        return [verify_model_checkpoint(path)]
    located = locate_training_checkpoint(path)
    if located is None and (as_path(path) / STATE_ITEM).is_dir():  # e.g. checkpoints_unreadable/
        return [verify_training_checkpoint(path)]
    if located is None and (as_path(path) / CHECKPOINTS_DIR).is_dir():  # no model_config.json
        located = (str(path), None)
    if located is None:
        raise FileNotFoundError(
            f"{path} is not a model checkpoint (no alexatm_checkpoint.json), a training MODEL_DIR "
            f"(model_config.json + {CHECKPOINTS_DIR}/) or a training checkpoint (with {STATE_ITEM}/)"
        )
    model_dir, step = located
    root = os.path.join(model_dir, CHECKPOINTS_DIR)
    # Finalized steps only: on GCS, Orbax writes a step in place and marks it committed last.
    steps = [step] if step is not None else sorted(ocp.step.checkpoint_steps(as_path(root)))
    if not steps:
        raise FileNotFoundError(f"{root} holds no finalized checkpoint")
    return [verify_training_checkpoint(os.path.join(root, str(s))) for s in steps]
