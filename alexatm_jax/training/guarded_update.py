"""One optimizer update that a non-finite step can skip, without copying the optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from alexatm_jax.training.optimizer import applied_learning_rate


def _keep_float_state(new: jax.Array, old: jax.Array) -> jax.Array:
    return new if jnp.issubdtype(new.dtype, jnp.integer) else old


def guarded_update(
    optimizer: optax.GradientTransformation,
    grads: Any,
    params: Any,
    opt_state: Any,
    finite: jax.Array | None,
) -> tuple[Any, Any, jax.Array]:
    """(params, opt_state, learning rate of this update) after applying `grads`.

    With `finite` (a boolean scalar) False the update is skipped: parameters and floating-point
    optimizer statistics stay, integer counters (learning-rate schedule, freeze window) advance,
    so the schedule follows the global step. `finite=None` always applies the update.

    The two cases are the branches of a `lax.cond`, not an elementwise select between the old
    and the new trees: with the select, XLA:CPU copied every moment buffer of the (donated)
    optimizer state before updating it and split the AdamW arithmetic of each parameter over
    three fusions that each recomputed it. The branch that applies the update updates the
    buffers in place.
    """

    def apply(operands: tuple[Any, Any, Any]) -> tuple[Any, Any, jax.Array]:
        grads, params, opt_state = operands
        updates, new_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, applied_learning_rate(new_state)

    if finite is None:
        return apply((grads, params, opt_state))

    def skip(operands: tuple[Any, Any, Any]) -> tuple[Any, Any, jax.Array]:
        _, params, opt_state = operands
        _, new_state, learning_rate = apply(operands)  # XLA keeps only its integer counters
        return params, jax.tree.map(_keep_float_state, new_state, opt_state), learning_rate

    return jax.lax.cond(finite, apply, skip, (grads, params, opt_state))
