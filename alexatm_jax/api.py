"""`alexatm_jax.load(path)`: a ready-to-run model from a directory on disk or in a bucket
(`gs://bucket/run`).

`load` asks each registered directory loader, in order, whether it recognises the directory.
The model-checkpoint loader (marker file `alexatm_checkpoint.json`) is built in; other
formats (e.g. a trainer's model directory) add theirs with `register_directory_loader`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from alexatm_jax import checkpoints
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import model_inputs
from alexatm_jax.model.transformer import AlexaTM
from alexatm_jax.storage import as_path, is_remote

Params = Any
ModelPath = pathlib.Path | epath.Path  # epath.Path for a URL such as gs://bucket/run


@dataclasses.dataclass
class LoadedModel:
    """A model with its parameters: `logits(batch)` and `encode(batch)` run jitted."""

    config: ModelConfig
    params: Params
    path: ModelPath
    tokenizer_dir: ModelPath | None = None

    @functools.cached_property
    def model(self) -> AlexaTM:
        """The Flax module for `config`."""
        return AlexaTM(self.config)

    @functools.cached_property
    def _jitted_logits(self) -> Callable[..., jax.Array]:
        return jax.jit(lambda params, inputs: self.model.apply({"params": params}, **inputs))

    @functools.cached_property
    def _jitted_encode(self) -> Callable[..., jax.Array]:
        def encode(params: Params, inputs: dict[str, jax.Array]) -> jax.Array:
            return self.model.apply({"params": params}, method=AlexaTM.encode, **inputs)

        return jax.jit(encode)

    def logits(self, batch: Mapping[str, Any]) -> np.ndarray:
        """float32 logits [batch, decoder_len, vocab] for a batch of T5X-named features.

        Uses encoder/decoder_input_tokens and, when present, encoder/decoder_segment_ids
        (0 = padding), encoder/decoder_positions and encoder_token_type_ids.
        """
        inputs = {k: jnp.asarray(v, jnp.int32) for k, v in model_inputs(batch).items()}
        return np.asarray(self._jitted_logits(self.params, inputs), np.float32)

    def encode(self, batch: Mapping[str, Any]) -> np.ndarray:
        """float32 encoder states [batch, input_len, d_model] for the encoder features."""
        if "encoder_input_tokens" not in batch:
            raise KeyError(f"batch lacks encoder_input_tokens; it has {sorted(batch)}")
        names = (
            "encoder_input_tokens",
            "encoder_segment_ids",
            "encoder_positions",
            "encoder_token_type_ids",
        )
        inputs = {k: jnp.asarray(batch[k], jnp.int32) for k in names if batch.get(k) is not None}
        return np.asarray(self._jitted_encode(self.params, inputs), np.float32)

    @property
    def tokenizer_path(self) -> ModelPath | None:
        """The SentencePiece `*.model` file saved with the model, or None."""
        if self.tokenizer_dir is None:
            return None
        models = sorted(self.tokenizer_dir.glob("*.model"))
        return models[0] if models else None


@dataclasses.dataclass(frozen=True)
class DirectoryLoader:
    """A directory format `load` understands.

    `matches(path)` says whether a directory is in this format; `load(path, sharding,
    overrides)` returns the LoadedModel; `description` names what the format contains (shown
    when no loader matches).
    """

    description: str
    matches: Callable[[ModelPath], bool]
    load: Callable[[ModelPath, Any, dict[str, Any]], LoadedModel]


def _load_model_checkpoint(
    path: ModelPath, sharding: Any, overrides: dict[str, Any]
) -> LoadedModel:
    config, params = checkpoints.restore_model_checkpoint(path, overrides, sharding)
    return LoadedModel(config, params, path, checkpoints.tokenizer_dir(path))


def _is_training_checkpoint(path: ModelPath) -> bool:
    from alexatm_jax.training.trained_model import is_training_checkpoint_path

    return is_training_checkpoint_path(path)


def _load_training_checkpoint(
    path: ModelPath, sharding: Any, overrides: dict[str, Any]
) -> LoadedModel:
    from alexatm_jax.training.trained_model import restore_trained_model

    config, params, tokenizer, _ = restore_trained_model(path, sharding, overrides)
    return LoadedModel(config, params, path, tokenizer)


_LOADERS: list[DirectoryLoader] = [
    DirectoryLoader(
        f"a model checkpoint (contains {checkpoints.MARKER_FILE})",
        checkpoints.is_model_checkpoint,
        _load_model_checkpoint,
    ),
    DirectoryLoader(
        "a training MODEL_DIR (model_config.json + checkpoints/; newest step) or "
        "one of its checkpoints/<step> directories",
        _is_training_checkpoint,
        _load_training_checkpoint,
    ),
]


def register_directory_loader(loader: DirectoryLoader) -> None:
    """Make `load` understand one more directory format (tried after the earlier ones)."""
    _LOADERS.append(loader)


def load(path: str | os.PathLike, *, sharding: Any = None, **config_overrides: Any) -> LoadedModel:
    """Load a model from `path`, a local directory or a URL such as gs://bucket/run (see the
    registered directory formats; loaders get a pathlib.Path, or an epath.Path for a URL).

    `config_overrides` change run-time ModelConfig fields (dtype, param_dtype, scan_layers,
    remat_policy, attention_impl, dropout); `sharding` is one jax Sharding or a tree of them
    matching the params (default: the first local device).
    """
    path = as_path(path) if is_remote(path) else pathlib.Path(path).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    for loader in _LOADERS:
        if loader.matches(path):
            return loader.load(path, sharding, config_overrides)
    expected = "; or ".join(loader.description for loader in _LOADERS)
    raise ValueError(f"{path} is not a directory alexatm_jax.load understands: expected {expected}")
