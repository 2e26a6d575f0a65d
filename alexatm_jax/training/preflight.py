"""Checks made before a training run writes anything: MODEL_DIR, vocabulary, data, and what to
do when MODEL_DIR holds only unreadable checkpoints."""

from __future__ import annotations

import os

import jax

from alexatm_jax.gcs_access import GcsAccessError, check_paths
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.storage import as_path, is_remote
from alexatm_jax.training.checkpointing import TrainingCheckpointer
from alexatm_jax.training.config import InvalidTrainArguments
from alexatm_jax.training.console import say
from alexatm_jax.training.metrics_writer import rotate_run_logs
from alexatm_jax.training.model_dir import UNREADABLE_CHECKPOINTS_DIR


class NoReadableCheckpointError(RuntimeError):
    """MODEL_DIR had checkpoints but none could be restored (and on_unreadable='stop')."""


def checked_vocabulary(model_config: ModelConfig, vocab_path: str | None) -> str:
    """Path of the SentencePiece model the SeqIO tasks will use; refuses one with more pieces
    than the model has embeddings."""
    from alexatm_jax.data.seqio_batches import resolve_vocabulary

    try:
        path, size = resolve_vocabulary(vocab_path)
    except (OSError, ValueError) as error:
        raise InvalidTrainArguments(f"the vocabulary cannot be used: {error}") from error
    if size > model_config.vocab_size:
        raise InvalidTrainArguments(
            f"the vocabulary {path} has {size} pieces but ModelConfig.vocab_size is "
            f"{model_config.vocab_size}: set the model's VOCAB_SIZE macro to at least {size}"
        )
    return path


def check_remote_paths(model_dir: str, inputs: dict[str, str | None]) -> None:
    """Refuse gs:// paths that cannot be used (no credentials, no bucket, no permission) before
    anything touches them: MODEL_DIR must be writable, the `inputs` ({what: path}, e.g. DATA_DIR)
    readable. See alexatm_jax.gcs_access."""
    try:
        check_paths({"MODEL_DIR": model_dir, **inputs}, write=("MODEL_DIR",))
    except GcsAccessError as error:
        raise InvalidTrainArguments(str(error)) from error


def check_model_dir(model_dir: str) -> None:
    """Refuse a local MODEL_DIR that is not a directory or cannot be written (checked without
    creating anything); a gs:// MODEL_DIR is checked by `check_remote_paths`."""
    if is_remote(model_dir):
        return
    existing = model_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    where = (
        f"MODEL_DIR {model_dir}"
        if existing == model_dir
        else f"{existing} (on the way to MODEL_DIR {model_dir})"
    )
    if not os.path.isdir(existing):
        raise InvalidTrainArguments(
            f"{where} exists and is not a directory: choose another --model_dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidTrainArguments(
            f"{where} is not writable (read-only file system or "
            "permissions): choose another --model_dir"
        )


def check_data(
    data_source: str,
    mixture: str,
    data_dir: str | None,
    vocab_path: str | None,
    prepared_data: str | None = None,
) -> None:
    """Refuse a missing/empty DATA_DIR, an unknown mixture, or prepared data that no longer
    matches the registry or the vocabulary, before MODEL_DIR is touched."""
    try:
        if data_source == "seqio":
            from alexatm_jax.data.seqio_batches import check_dataset

            check_dataset(mixture=mixture, data_dir=data_dir, vocab_path=vocab_path)
        elif data_source == "prepared":
            from alexatm_jax.data.prepared_batches import checked_preparation

            checked_preparation(str(prepared_data), mixture, vocab_path)
    except (OSError, ValueError) as error:
        raise InvalidTrainArguments(f"the training data cannot be read: {error}") from error


def check_unreadable(
    model_dir: str, checkpointer: TrainingCheckpointer, on_unreadable: str
) -> None:
    """No checkpoint could be restored: stop (NoReadableCheckpointError) if this MODEL_DIR held
    a run whose checkpoints are all unreadable, unless on_unreadable='restart' (then rotate its
    metrics aside). A MODEL_DIR that never had a checkpoint starts fresh."""
    quarantined = list(checkpointer.quarantined)
    unreadable_dir = as_path(model_dir) / UNREADABLE_CHECKPOINTS_DIR
    earlier = (
        sorted(
            (p.name for p in unreadable_dir.iterdir()),
            key=lambda name: (len(name.split("-")[0]), name),
        )
        if unreadable_dir.is_dir()
        else []
    )
    if not quarantined and not earlier:
        return
    found = (
        "; ".join(quarantined)
        if quarantined
        else f"no checkpoint left; {UNREADABLE_CHECKPOINTS_DIR}/ holds {', '.join(earlier)}"
    )
    if on_unreadable == "stop":
        raise NoReadableCheckpointError(
            f"MODEL_DIR {model_dir} has no readable checkpoint ({found}); unreadable ones are in "
            f"{unreadable_dir}. Refusing to start this run again from step 0. Restore a good "
            f"checkpoint into {checkpointer.directory}, use another --model_dir, or pass "
            "--gin.train.on_unreadable=\"'restart'\" to start afresh here (the old metrics are "
            "kept, renamed)."
        )
    rotated = rotate_run_logs(model_dir) if jax.process_index() == 0 else []
    say(
        f"No readable checkpoint in {model_dir} ({found}); starting again from step 0 as "
        f"on_unreadable='restart' asks"
        + (f"; kept the old logs as {', '.join(rotated)}" if rotated else "")
    )
