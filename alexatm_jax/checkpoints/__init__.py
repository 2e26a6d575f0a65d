"""Checkpoint formats: the model checkpoint (params + config + tokenizer) and atomic writes."""

from alexatm_jax.checkpoints.model_checkpoint import (
    MARKER_FILE,
    CheckpointInfo,
    is_model_checkpoint,
    read_checkpoint_info,
    read_model_config,
    restore_model_checkpoint,
    save_model_checkpoint,
    tokenizer_dir,
)

__all__ = [
    "MARKER_FILE",
    "CheckpointInfo",
    "is_model_checkpoint",
    "read_checkpoint_info",
    "read_model_config",
    "restore_model_checkpoint",
    "save_model_checkpoint",
    "tokenizer_dir",
]
