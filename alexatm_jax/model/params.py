"""Parameter creation and inspection without a mesh: shapes, logical axes, random init."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.transformer import AlexaTM

MODEL_INPUT_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
    "encoder_token_type_ids",
)
Params = Any


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a feature dict that `AlexaTM.__call__` takes (targets and weights dropped)."""
    missing = [k for k in ("encoder_input_tokens", "decoder_input_tokens") if k not in batch]
    if missing:
        raise KeyError(f"batch lacks required features {missing}; it has {sorted(batch)}")
    return {k: batch[k] for k in MODEL_INPUT_FEATURES if k in batch and batch[k] is not None}


def _boxed_init(config: ModelConfig, rng: jax.Array) -> Params:
    # Parameters do not depend on the attention kernel; einsum traces on every backend (cuDNN
    # attention cannot even be traced on CPU, where alexatm-info and alexatm-plan run).
    config = config.replace(attention_impl="einsum", attention_dropout_rate=0.0)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return AlexaTM(config).init({"params": rng}, tokens, tokens)["params"]


def abstract_params(config: ModelConfig) -> Params:
    """ShapeDtypeStruct tree of the parameters, with logical-axis metadata boxes; allocates nothing."""
    return jax.eval_shape(lambda: _boxed_init(config, jax.random.key(0)))


def param_logical_axes(config: ModelConfig) -> Params:
    """Tree of PartitionSpecs of logical axis names, one per parameter."""
    return nn.get_partition_spec(abstract_params(config))


def param_shapes(config: ModelConfig) -> Params:
    """Tree of ShapeDtypeStructs (no metadata boxes)."""
    return nn.unbox(abstract_params(config))


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters per the release's init (N(0, init_std) weights, zero biases, unit LN)."""
    return nn.unbox(jax.jit(lambda r: _boxed_init(config, r))(rng))


def count_params(tree: Params) -> int:
    """Total number of scalars in a (possibly abstract) parameter tree."""
    return sum(
        int(jnp.size(x)) if not hasattr(x, "shape") else int(_prod(x.shape))
        for x in jax.tree_util.tree_leaves(tree)
    )


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out
