"""Random parameter trees for tests: every leaf random (LayerNorms and biases included)."""

from __future__ import annotations

import functools

import numpy as np
from flax import traverse_util

from alexatm_jax.model import ModelConfig, param_shapes
from alexatm_jax.model.layout import scan_params


@functools.cache
def unscanned_shapes(config: ModelConfig) -> dict:
    """Flat path -> ShapeDtypeStruct of config's parameters in the unscanned layout."""
    return traverse_util.flatten_dict(param_shapes(config.replace(scan_layers=False)))


def random_params(config: ModelConfig, seed: int, dtype=np.float32, scale: float = 1.0):
    """Numpy params with N(0, scale) entries, in config's layout (scanned when scan_layers)."""
    rng = np.random.default_rng(seed)
    params = traverse_util.unflatten_dict(
        {
            k: (scale * rng.normal(size=v.shape)).astype(dtype)
            for k, v in unscanned_shapes(config).items()
        }
    )
    return scan_params(params) if config.scan_layers else params
