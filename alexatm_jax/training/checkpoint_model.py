"""The model of a fine-tuning run comes from its `init_from` checkpoint, not from gin.

A converted release checkpoint (`alexatm-convert hf-to-jax`) and a training MODEL_DIR both hold
`model_config.json` and `tokenizer/<name>.model`. When a new run sets `train.init_from` (and no
`init_from_prefixes`: a partial warm start keeps the configured architecture), `model_from_checkpoint`
takes from there:

- the architecture, vocabulary size and special token ids (`ARCHITECTURE_FIELDS`: the fields of
  `ModelConfig.architecture()` but the parameter dtype);
- the tokenizer (`train.vocab_path`), which the data pipeline and MODEL_DIR/tokenizer then use.

Run-time fields (dtype, parameter dtype, remat policy, attention kernel, dropout, scanned layers) keep the
value gin binds, else the checkpoint's. A gin binding of an architecture field that differs from
the checkpoint's, or a `vocab_path` whose file differs from the checkpoint's tokenizer, is refused
with both values named. Paths may be local or `gs://` (alexatm_jax/storage.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.storage import as_path

CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
# ModelConfig.architecture() (what MODEL_DIR's guard compares) less param_dtype: the warm start
# casts the checkpoint's values to the configured parameter dtype (e.g. bfloat16 release weights
# into float32 master weights).
ARCHITECTURE_FIELDS = tuple(name for name in ModelConfig().architecture() if name != "param_dtype")


class CheckpointConflictError(ValueError):
    """The gin configuration contradicts the model checkpoint a run starts from."""


def checkpoint_model_config(path: str) -> ModelConfig:
    """The ModelConfig stored in the model checkpoint or training MODEL_DIR at `path`."""
    config_file = as_path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"init_from={path!r} has no {CONFIG_FILE}: it is neither a model checkpoint "
            "(alexatm-convert hf-to-jax) nor a training MODEL_DIR"
        )
    return ModelConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))


def checkpoint_tokenizer(path: str) -> str | None:
    """The SentencePiece model in `path`/tokenizer/ (None when there is none)."""
    directory = as_path(path) / TOKENIZER_DIR
    models = sorted(directory.glob("*.model")) if directory.is_dir() else []
    return str(models[0]) if models else None


def _same_file(first: str, second: str) -> bool:
    return as_path(first).read_bytes() == as_path(second).read_bytes()


def model_from_checkpoint(config: Any, bound: Mapping[str, Any]) -> Any:
    """`config` (a TrainConfig) with its model and tokenizer taken from `config.init_from`.

    bound: the ModelConfig fields the gin configuration binds explicitly ({field: value}); those
    of ARCHITECTURE_FIELDS must equal the checkpoint's. Returns `config` unchanged without
    `init_from` or with `init_from_prefixes`. Raises CheckpointConflictError naming every
    contradiction, FileNotFoundError when `init_from` holds no model_config.json.
    """
    if not config.init_from or config.init_from_prefixes:
        return config
    source = checkpoint_model_config(config.init_from)
    conflicts = [
        f"ModelConfig.{name} = {bound[name]!r} in the gin configuration, but the checkpoint "
        f"has {name} = {getattr(source, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if name in bound and bound[name] != getattr(source, name)
    ]
    tokenizer = checkpoint_tokenizer(config.init_from)
    vocab_path = config.vocab_path or tokenizer
    if config.vocab_path and tokenizer and not _same_file(config.vocab_path, tokenizer):
        conflicts.append(
            f"train.vocab_path = {config.vocab_path!r}, but the checkpoint's tokenizer is "
            f"{tokenizer!r} (another file)"
        )
    if conflicts:
        raise CheckpointConflictError(
            f"the configuration contradicts init_from={config.init_from}: "
            + "; ".join(conflicts)
            + ". Remove those bindings: the model comes from the checkpoint."
        )
    runtime = {
        field.name: bound[field.name]
        for field in dataclasses.fields(ModelConfig)
        if field.name not in ARCHITECTURE_FIELDS and field.name in bound
    }
    return config.replace(model_config=source.replace(**runtime), vocab_path=vocab_path)
