"""A ready `TextModel` from a checkpoint directory (`alexatm_jax.load` + tokenizer + engine)."""

from __future__ import annotations

import os
from typing import Any

from alexatm_jax import checkpoints
from alexatm_jax.decoding.engine import InferenceEngine
from alexatm_jax.decoding.text import TextModel
from alexatm_jax.tokenization import Tokenizer


def load_text_model(
    checkpoint: str | os.PathLike,
    *,
    tokenizer_path: str | None = None,
    partitioner: Any = None,
    batch_size: int = 8,
    show_progress: bool = False,
    **config_overrides: Any,
) -> TextModel:
    """Loads the checkpoint's parameters (sharded by `partitioner` when given) and tokenizer.

    tokenizer_path: a SentencePiece .model overriding the checkpoint's `tokenizer/` one.
    config_overrides: run-time ModelConfig fields (dtype, param_dtype, scan_layers, ...).
    """
    import alexatm_jax

    sharding = None
    if partitioner is not None and checkpoints.is_model_checkpoint(checkpoint):
        config = checkpoints.read_model_config(checkpoint).replace(**config_overrides)
        sharding = partitioner.params_shardings(config)
    loaded = alexatm_jax.load(checkpoint, sharding=sharding, **config_overrides)
    path = tokenizer_path or loaded.tokenizer_path
    if path is None:
        raise ValueError(
            f"{checkpoint} has no tokenizer/ directory with a SentencePiece .model: "
            "pass the tokenizer file explicitly (--tokenizer)"
        )
    engine = InferenceEngine(
        loaded.config,
        loaded.params,
        partitioner=partitioner,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return TextModel(engine, Tokenizer(str(path)))
