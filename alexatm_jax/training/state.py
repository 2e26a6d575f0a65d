"""The train state (step, float32 master parameters, optimizer state) and its shardings."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec
from optax._src.factorized import _factored_dims

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import init_params
from alexatm_jax.partitioning import Partitioner


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes: `step` (int32 scalar), params, opt_state."""

    step: jax.Array
    params: Any
    opt_state: Any


def training_model_config(model_config: ModelConfig) -> ModelConfig:
    """`model_config` with float32 parameters: training keeps f32 master weights whatever the
    compute dtype (the model casts them to `dtype` at every use)."""
    return model_config.replace(param_dtype="float32")


def _init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                rng: jax.Array) -> TrainState:
    params = init_params(training_model_config(model_config), rng)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def abstract_train_state(model_config: ModelConfig,
                         optimizer: optax.GradientTransformation) -> TrainState:
    """TrainState of ShapeDtypeStructs (nothing allocated); the restore target for checkpoints."""
    return jax.eval_shape(lambda: _init_state(model_config, optimizer, jax.random.key(0)))


def train_state_shardings(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                          partitioner: Partitioner) -> TrainState:
    """TrainState of NamedShardings: params by the partitioner's rules, optimizer statistics
    like their parameters (factored Adafactor rows/columns with the reduced dim dropped),
    counters and other scalars replicated."""
    abstract = abstract_train_state(model_config, optimizer)
    params_shardings = partitioner.params_shardings(training_model_config(model_config))
    replicated = NamedSharding(partitioner.mesh, PartitionSpec())
    return TrainState(
        step=replicated, params=params_shardings,
        opt_state=optimizer_state_shardings(abstract.opt_state, abstract.params, params_shardings))


def optimizer_state_shardings(opt_state_shapes: Any, params_shapes: Any,
                              params_shardings: Any) -> Any:
    """NamedSharding per optimizer-state leaf, derived from the parameter it belongs to.

    A state leaf belongs to a parameter when its tree path ends with that parameter's path
    (true of every optax per-parameter statistic). Same shape -> the parameter's sharding;
    one dimension fewer (Adafactor's factored `v_row`/`v_col`) -> the parameter's spec with that
    dimension removed; anything else (counts, placeholders) -> replicated.
    """
    by_path = {}
    for (path, shape), sharding in zip(jax.tree_util.tree_flatten_with_path(params_shapes)[0],
                                       jax.tree.leaves(params_shardings)):
        by_path[tuple(_key_name(k) for k in path)] = (shape, sharding)
    mesh = jax.tree.leaves(params_shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf_sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        owner = _owning_param(path, by_path)
        if owner is None or not hasattr(leaf, "shape"):
            return replicated
        param, sharding = owner
        if tuple(leaf.shape) == tuple(param.shape):
            return sharding
        dropped = _factored_axis(path, tuple(param.shape))
        if dropped is not None:
            spec = list(sharding.spec) + [None] * (len(param.shape) - len(sharding.spec))
            reduced = spec[:dropped] + spec[dropped + 1:]
            expected = tuple(param.shape[:dropped] + param.shape[dropped + 1:])
            if tuple(leaf.shape) == expected:
                return NamedSharding(mesh, PartitionSpec(*reduced))
        return replicated

    return jax.tree_util.tree_map_with_path(leaf_sharding, opt_state_shapes)


def _key_name(key: Any) -> Any:
    return getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))


def _owning_param(path: tuple[Any, ...], by_path: dict) -> tuple[Any, NamedSharding] | None:
    dict_keys = []
    for key in reversed(path):
        if not isinstance(key, jax.tree_util.DictKey):
            break
        dict_keys.insert(0, key.key)
    for start in range(len(dict_keys)):
        found = by_path.get(tuple(dict_keys[start:]))
        if found is not None:
            return found
    return None


def _factored_axis(path: tuple[Any, ...], shape: tuple[int, ...]) -> int | None:
    """The parameter dimension averaged away in an Adafactor factored statistic, else None."""
    names = {getattr(k, "name", None) for k in path}
    dims = _factored_dims(shape, True, 0)
    if dims is None:
        return None
    second_largest, largest = dims
    if "v_row" in names:
        return largest
    if "v_col" in names:
        return second_largest
    return None


def create_train_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                       partitioner: Partitioner, rng: jax.Array) -> TrainState:
    """A freshly initialised TrainState, created directly in its shardings (never gathered)."""
    shardings = train_state_shardings(model_config, optimizer, partitioner)
    with partitioner.activate():
        init = jax.jit(lambda key: _init_state(model_config, optimizer, key),
                       out_shardings=shardings)
        return init(rng)
