"""Read a training MODEL_DIR for inference (what `alexatm_jax.load` does with one).

`path` is either the MODEL_DIR (its newest checkpoint is used) or one checkpoint in it,
`MODEL_DIR/checkpoints/<step>`. Only the parameters are read; the optimizer state stays on disk.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.layout import convert_layout
from alexatm_jax.model.params import param_shapes
from alexatm_jax.storage import absolute, as_path, is_remote
from alexatm_jax.training.checkpointing import restore_params_from_model_dir
from alexatm_jax.training.model_dir import (
    CHECKPOINTS_DIR,
    TOKENIZER_DIR,
    is_training_model_dir,
    read_model_config,
)


def locate_training_checkpoint(path: str | os.PathLike) -> tuple[str, int | None] | None:
    """(MODEL_DIR, step or None for the newest) when `path` is a training dir or one of its
    checkpoints, else None. `path` may be local or a URL such as gs://bucket/run."""
    path = absolute(path)
    if is_remote(path):
        path = path.rstrip("/")
    if is_training_model_dir(path):
        return path, None
    parent = os.path.dirname(path)
    model_dir = os.path.dirname(parent)
    if (
        os.path.basename(parent) == CHECKPOINTS_DIR
        and os.path.basename(path).isdigit()
        and is_training_model_dir(model_dir)
    ):
        return model_dir, int(os.path.basename(path))
    return None


def is_training_checkpoint_path(path: str | os.PathLike) -> bool:
    """True for a training MODEL_DIR or a `MODEL_DIR/checkpoints/<step>` directory."""
    return locate_training_checkpoint(path) is not None


def _apply_overrides(stored: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    config = stored.replace(**dict(overrides))
    if config.architecture() != {**stored.architecture(), "param_dtype": config.param_dtype}:
        changed = sorted(
            k
            for k, v in config.architecture().items()
            if k != "param_dtype" and stored.architecture()[k] != v
        )
        raise ValueError(
            f"config overrides {changed} change the architecture of the trained "
            "parameters; only run-time fields (dtype, param_dtype, scan_layers, "
            "remat_policy, attention_impl, dropout rates) can be overridden"
        )
    return config


def restore_trained_model(
    path: str | os.PathLike,
    sharding: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, Any, pathlib.Path | epath.Path | None, int]:
    """(config, params, tokenizer dir or None, step) of a training checkpoint.

    `sharding`: one jax Sharding for every parameter or a tree of them in the target layout
    (default: the first local device). `overrides`: run-time ModelConfig fields; a different
    `scan_layers` converts the layer layout, a different `param_dtype` casts the parameters.
    """
    located = locate_training_checkpoint(path)
    if located is None:
        raise FileNotFoundError(
            f"{path} is neither a training MODEL_DIR nor one of its "
            f"{CHECKPOINTS_DIR}/<step> directories"
        )
    model_dir, step = located
    stored = read_model_config(model_dir)
    config = _apply_overrides(stored, overrides or {})
    same_layout = config.scan_layers == stored.scan_layers
    shardings = None
    if same_layout and sharding is not None:
        shardings = (
            sharding
            if not isinstance(sharding, jax.sharding.Sharding)
            else jax.tree.map(lambda _: sharding, param_shapes(stored))
        )
    params, _, step = restore_params_from_model_dir(model_dir, step, shardings=shardings)
    if not same_layout:
        params = convert_layout(params, config.scan_layers, consume=True)
        if sharding is not None:
            params = jax.device_put(params, sharding)
    params = jax.tree.map(lambda x: x.astype(config.param_dtype), params)
    root = as_path(model_dir) if is_remote(model_dir) else pathlib.Path(model_dir)
    tokenizer = root / TOKENIZER_DIR
    return config, params, (tokenizer if tokenizer.is_dir() else None), step
