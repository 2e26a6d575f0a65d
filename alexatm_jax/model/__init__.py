"""The AlexaTM encoder-decoder in Flax: config, modules, parameter helpers."""

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import (
    MODEL_INPUT_FEATURES,
    abstract_params,
    count_params,
    init_params,
    model_inputs,
    param_logical_axes,
    param_shapes,
)
from alexatm_jax.model.transformer import AlexaTM

__all__ = [
    "AlexaTM",
    "ModelConfig",
    "MODEL_INPUT_FEATURES",
    "abstract_params",
    "count_params",
    "init_params",
    "model_inputs",
    "param_logical_axes",
    "param_shapes",
]
