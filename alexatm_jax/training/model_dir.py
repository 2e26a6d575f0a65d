"""The layout of a training MODEL_DIR and the guard against resuming a different architecture.

MODEL_DIR/
  model_config.json        ModelConfig of the run (its architecture is checked on every launch)
  config.gin               operative gin config of the latest launch
  sharding_table.txt       parameter shapes and shardings of the latest launch
  tokenizer/               the SentencePiece model the data pipeline used (SeqIO runs)
  metrics.jsonl            one JSON record per logged step
  tensorboard/             TensorBoard event files
  checkpoints/<step>/      Orbax checkpoints: `state` (TrainState) and `progress` (JSON)
  checkpoints_unreadable/  checkpoints that failed to restore, moved aside (never deleted)
"""

from __future__ import annotations

import json
import os

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.storage import as_path

MODEL_CONFIG_FILE = "model_config.json"
GIN_CONFIG_FILE = "config.gin"
SHARDING_TABLE_FILE = "sharding_table.txt"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_CHECKPOINTS_DIR = "checkpoints_unreadable"


class ArchitectureMismatchError(ValueError):
    """MODEL_DIR holds a run of another architecture than the configured model."""


def is_training_model_dir(path: str) -> bool:
    """True when `path` (local or remote) looks like a training MODEL_DIR (model_config.json +
    checkpoints/)."""
    directory = as_path(path)
    return (directory / MODEL_CONFIG_FILE).is_file() and (directory / CHECKPOINTS_DIR).is_dir()


def read_model_config(model_dir: str) -> ModelConfig:
    """The ModelConfig saved in `model_dir/model_config.json`."""
    path = as_path(model_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {model_dir} is not a training model dir")
    return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _describe_differences(saved: dict, configured: dict) -> str:
    keys = sorted(set(saved) | set(configured))
    return ", ".join(
        f"{k}: saved {saved.get(k)!r} vs configured {configured.get(k)!r}"
        for k in keys
        if saved.get(k) != configured.get(k)
    )


def check_architecture(model_dir: str, model_config: ModelConfig) -> None:
    """Raise ArchitectureMismatchError when `model_dir` holds a run of another architecture.

    Runtime-only fields (dropout, dtype, remat, scan, attention implementation) may change between
    launches; `ModelConfig.architecture()` decides what must match. A dir without
    model_config.json passes.
    """
    if not (as_path(model_dir) / MODEL_CONFIG_FILE).is_file():
        return
    saved = read_model_config(model_dir)
    if saved.architecture() == model_config.architecture():
        return
    raise ArchitectureMismatchError(
        f"MODEL_DIR {model_dir} holds a run of a different architecture "
        f"({_describe_differences(saved.architecture(), model_config.architecture())}). "
        "Refusing to resume from it. To train this configuration, choose a new MODEL_DIR "
        "(--model_dir or --gin.MODEL_DIR=...); to start from that run's weights in a compatible "
        f"model, use a new MODEL_DIR with --gin.train.init_from='{model_dir}'; to continue that "
        "run, use the gin model file it was started with (see its config.gin)."
    )


def write_model_config(model_dir: str, model_config: ModelConfig) -> str:
    """Write `model_config.json` (atomically); returns its path."""
    return write_text_file(model_dir, MODEL_CONFIG_FILE, model_config.to_json() + "\n")


def write_text_file(model_dir: str, name: str, text: str) -> str:
    """Write `model_dir/name` (local or remote) atomically (temp + rename); returns its path."""
    directory = as_path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f"{name}.tmp.{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return str(path)
