"""The train state (step, float32 master parameters, optimizer state) and its shardings."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import abstract_params, init_params
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


def _init_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    params = init_params(training_model_config(model_config), rng)
    return TrainState(
        step=jnp.zeros([], jnp.int32), params=params, opt_state=optimizer.init(params)
    )


def abstract_train_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation
) -> TrainState:
    """TrainState of ShapeDtypeStructs (nothing allocated); the restore target for checkpoints."""
    return jax.eval_shape(lambda: _init_state(model_config, optimizer, jax.random.key(0)))


def boxed_abstract_train_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation
) -> TrainState:
    """`abstract_train_state` with every array in a flax `Partitioned` box naming its logical
    axes: parameters as the model declares them, optimizer statistics as the parameter they
    belong to (optax keeps the boxes of the parameters it is initialised on), counters unboxed.

    Adafactor's factored statistics (`v_row`, `v_col`: a parameter's shape with one dimension
    averaged away) get the one explicit rule, `_factored_names`. Any other statistic whose shape
    is not its parameter's (Adafactor's size-1 placeholders) is unboxed, i.e. replicated.
    """
    boxed_params = abstract_params(training_model_config(model_config))
    boxed = jax.eval_shape(
        lambda: TrainState(
            step=jnp.zeros([], jnp.int32),
            params=boxed_params,
            opt_state=optimizer.init(boxed_params),
        )
    )

    # By path: the optimizer's trees cover the trained parameters only (no buffers).
    param_at = {
        jax.tree_util.keystr(path): box
        for path, box in jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=_is_box)[0]
    }

    def fix_factored(node: Any) -> Any:
        if not isinstance(node, optax.FactoredState):
            return node
        rename = lambda tree, row: jax.tree_util.tree_map_with_path(
            lambda path, v: _factored_names(param_at[jax.tree_util.keystr(path)], v, row=row),
            tree,
            is_leaf=_is_box,
        )
        return node._replace(
            v_row=rename(node.v_row, True), v_col=rename(node.v_col, False), v=rename(node.v, None)
        )

    opt_state = jax.tree.map(
        fix_factored, boxed.opt_state, is_leaf=lambda x: isinstance(x, optax.FactoredState)
    )
    return jax.tree.map(_unbox_if_misnamed, boxed.replace(opt_state=opt_state), is_leaf=_is_box)


def train_state_shardings(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, partitioner: Partitioner
) -> TrainState:
    """TrainState of NamedShardings, all from logical axes by the partitioner's rules
    (`boxed_abstract_train_state`); counters and other scalars replicated."""
    return partitioner.logical_shardings(boxed_abstract_train_state(model_config, optimizer))


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _factored_names(param: Any, statistic: Any, *, row: bool | None) -> Any:
    """The box of one Adafactor statistic of `param`: the parameter's names when it has the
    parameter's shape; for a factored statistic (optax `scale_by_factored_rms`: of the two
    largest dimensions by `np.argsort` order, the row statistic (`row=True`) averages the
    largest away, the column statistic the second largest) the names of the dimensions it
    keeps; a placeholder of another shape is unboxed (replicated)."""
    if not (_is_box(param) and _is_box(statistic) and hasattr(statistic.value, "shape")):
        return statistic
    shape, got = tuple(param.value.shape), tuple(statistic.value.shape)
    if got == shape:
        return statistic.replace(names=param.names)
    if row is None or len(shape) < 2 or len(got) != len(shape) - 1:
        return statistic.value
    order = np.argsort(shape)
    dropped = int(order[-1] if row else order[-2])
    if tuple(np.delete(shape, dropped)) != got:
        return statistic.value
    return statistic.replace(names=param.names[:dropped] + param.names[dropped + 1 :])


def _unbox_if_misnamed(leaf: Any) -> Any:
    """A box whose names do not match its value's rank (placeholders, and optax's MaskedNode
    where a multi_transform group leaves a parameter to another group): the bare value."""
    if _is_box(leaf) and len(leaf.names) != getattr(leaf.value, "ndim", None):
        return leaf.value
    return leaf


def create_train_state(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    partitioner: Partitioner,
    rng: jax.Array,
) -> TrainState:
    """A freshly initialised TrainState, created directly in its shardings (never gathered)."""
    shardings = train_state_shardings(model_config, optimizer, partitioner)
    init = partitioner.partition(
        lambda key: _init_state(model_config, optimizer, key), out_shardings=shardings
    )
    return init(rng)
