"""The jitted, sharded train and eval steps.

A batch is a dict of global [global_batch, len] arrays with the T5X feature names
(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights and
optionally *_segment_ids / *_positions / encoder_token_type_ids), sharded on the batch axes.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.dropout import batch_block
from alexatm_jax.model.params import model_inputs
from alexatm_jax.model.transformer import AlexaTM, head_is_vocab_major
from alexatm_jax.partitioning import Partitioner
from alexatm_jax.training.guarded_update import guarded_update
from alexatm_jax.training.loss import fused_head_statistics, token_statistics
from alexatm_jax.training.optimizer import HeldState, freeze_labels, FROZEN
from alexatm_jax.training.state import (TrainState, abstract_train_state, training_model_config,
                                        train_state_shardings)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
REQUIRED_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                     "decoder_loss_weights")


def _check_batch(batch: Batch) -> None:
    missing = [name for name in REQUIRED_FEATURES if name not in batch]
    if missing:
        raise KeyError(f"batch lacks features {missing}; it has {sorted(batch)}")


def _microbatches(batch: Batch, num: int, sharding: NamedSharding) -> Batch:
    """[B, ...] -> [num, B/num, ...] where microbatch i holds rows i, i+num, ... so that every
    device keeps contributing rows to every microbatch."""
    def split(x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        spec = PartitionSpec(None, *sharding.spec)
        return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, spec))
    return {name: split(x) for name, x in batch.items()}


def make_train_step(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                    partitioner: Partitioner, *, grad_accum_steps: int = 1, z_loss: float = 0.0,
                    skip_nonfinite: bool = True, freeze_prefixes: tuple[str, ...] = (),
                    freeze_steps: int = 0, inject_nonfinite_steps: tuple[int, ...] = (),
                    fused_head: bool = True, parallel_branches: int | None = 1
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """train_step(state, batch, rng) -> (new_state, metrics); the input state is donated.

    The loss is token cross-entropy (+ optional z-loss) summed over the whole global batch and
    divided by its number of real target tokens, so `grad_accum_steps` microbatches give the
    same gradient as one full batch. A non-finite loss or gradient norm skips the update: params
    and floating-point optimizer statistics stay as they were, integer counters (schedule,
    freeze window) and `step` advance, and metrics['skipped'] is 1. Dropout uses
    fold_in(rng, step) (masks drawn per `model_config.dropout_rng_impl`). Metrics are float32
    scalars: loss (nats/token), accuracy, grad_norm (before clipping), learning_rate (the
    schedule's value at this step, also when the update is skipped), num_target_tokens, skipped
    (+ z_loss).

    `inject_nonfinite_steps` (fault injection for tests; empty = off, and then not compiled in)
    makes the loss and gradients NaN at those 1-based steps, as a diverging model would.

    `fused_head=True` computes the LM head inside the loss (`fused_head_statistics`: same
    values, less memory, faster on CPU); False applies the model's own head and
    `token_statistics`. `parallel_branches` splits each (micro)batch into that many contiguous
    blocks of rows whose gradients are independent branches of the program, summed (the same
    gradient up to float rounding, the same dropout masks); XLA:CPU runs each matmul on one core
    but independent ops side by side. Measured on a quiet 2-core CPU it gained only 2% over 1
    (XLA already keeps ~1.6 threads busy) for 50% more compile time, so the default is 1; None
    picks `auto_parallel_branches` (cores per device on CPU).

    `freeze_prefixes`/`freeze_steps` (pass the values of OptimizerConfig, whose optimizer does
    the actual freezing) additionally stop gradients into those subtrees while
    step < freeze_steps, so their backward pass is not computed at all.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    freeze_prefixes = tuple(freeze_prefixes)
    abstract = abstract_train_state(model_config, optimizer)
    if freeze_prefixes and freeze_steps > 0 and not _has_frozen_group(abstract.opt_state):
        raise ValueError("make_train_step got freeze_prefixes but the optimizer does not freeze: "
                         "set OptimizerConfig(freeze_prefixes=..., freeze_steps=...) too")
    model = AlexaTM(training_model_config(model_config))
    state_shardings = train_state_shardings(model_config, optimizer, partitioner)
    batch_sharding = NamedSharding(partitioner.mesh, partitioner.batch_spec(1))
    replicated = NamedSharding(partitioner.mesh, PartitionSpec())
    frozen_mask = (jax.tree.map(lambda label: label == FROZEN,
                                freeze_labels(freeze_prefixes)(abstract.params))
                   if freeze_prefixes and freeze_steps > 0 else None)

    vocab_major = head_is_vocab_major(model_config)

    def micro_objective(params, micro, key, denominator):
        rngs = {"dropout": key}
        targets, weights = micro["decoder_target_tokens"], micro["decoder_loss_weights"]
        if fused_head:
            hidden, kernel, bias = model.apply({"params": params}, **model_inputs(micro),
                                               deterministic=False, rngs=rngs,
                                               method=AlexaTM.hidden_and_head)
            stats = fused_head_statistics(hidden, kernel, bias, targets, weights, z_loss,
                                          vocab_major=vocab_major)
        else:
            logits = model.apply({"params": params}, **model_inputs(micro), deterministic=False,
                                 rngs=rngs)
            stats = token_statistics(logits, targets, weights, z_loss)
        return (stats["loss_sum"] + stats["z_loss_sum"]) / denominator, stats

    single_grad_fn = jax.grad(micro_objective, has_aux=True)

    def grad_fn(params, micro, key, denominator, branches):
        # `branches` independent gradient computations over contiguous blocks of rows, summed:
        # XLA:CPU runs independent ops side by side, so each branch keeps one core busy. Each
        # block draws the whole batch's dropout masks' rows (dropout.batch_block).
        if branches == 1:
            return single_grad_fn(params, micro, key, denominator)
        results = []
        for j in range(branches):
            rows = jax.tree.map(lambda x: x.reshape((branches, -1) + x.shape[1:])[j], micro)
            with batch_block(j, branches):
                results.append(single_grad_fn(params, rows, key, denominator))
        return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *results)

    def gradients(params, batch, key, denominator, branches):
        if grad_accum_steps == 1:
            return grad_fn(params, batch, jax.random.fold_in(key, 0), denominator, branches)
        micro = _microbatches(batch, grad_accum_steps, batch_sharding)

        def accumulate(carry, xs):
            index, micro_batch = xs
            grads, stats = grad_fn(params, micro_batch, jax.random.fold_in(key, index),
                                   denominator, branches)
            return jax.tree.map(jnp.add, carry, (grads, stats)), None

        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            single_grad_fn, params, jax.tree.map(lambda x: x[0], micro), key, denominator))
        zeros = (jax.lax.with_sharding_constraint(zeros[0], state_shardings.params), zeros[1])
        total, _ = jax.lax.scan(accumulate, zeros,
                                (jnp.arange(grad_accum_steps, dtype=jnp.int32), micro))
        return total

    def gradients_maybe_frozen(params, batch, key, denominator, step, branches):
        if frozen_mask is None:
            return gradients(params, batch, key, denominator, branches)
        stopped = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                               params, frozen_mask)
        return jax.lax.cond(step < freeze_steps,
                            lambda: gradients(stopped, batch, key, denominator, branches),
                            lambda: gradients(params, batch, key, denominator, branches))

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        _check_batch(batch)
        global_batch = batch["decoder_target_tokens"].shape[0]
        if global_batch % grad_accum_steps:
            raise ValueError(f"global batch {global_batch} is not divisible by "
                             f"grad_accum_steps={grad_accum_steps}")
        if (global_batch // grad_accum_steps) % partitioner.num_batch_shards:
            raise ValueError(
                f"a microbatch of {global_batch // grad_accum_steps} rows cannot be split over "
                f"the {partitioner.num_batch_shards} batch shards; use a global batch that is a "
                f"multiple of grad_accum_steps x {partitioner.num_batch_shards}")
        rows = global_batch // grad_accum_steps
        branches = (parallel_branches if parallel_branches is not None else
                    auto_parallel_branches(rows, partitioner))
        if branches < 1 or rows % branches:
            raise ValueError(f"parallel_branches={branches} must be >= 1 and divide the "
                             f"{rows} rows of a microbatch")
        num_tokens = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))
        denominator = jnp.maximum(num_tokens, 1.0)
        key = jax.random.fold_in(rng, state.step)
        grads, stats = gradients_maybe_frozen(state.params, batch, key, denominator, state.step,
                                              branches)
        if inject_nonfinite_steps:
            poison = jnp.where(jnp.isin(state.step + 1, jnp.asarray(inject_nonfinite_steps)),
                               jnp.float32(jnp.nan), jnp.float32(0.0))
            grads = jax.tree.map(lambda g: g + poison.astype(g.dtype), grads)
            stats = dict(stats, loss_sum=stats["loss_sum"] + poison)
        grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
        grad_norm = optax.global_norm(grads)
        objective = (stats["loss_sum"] + stats["z_loss_sum"]) / denominator
        finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
        params, opt_state, learning_rate = guarded_update(
            optimizer, grads, state.params, state.opt_state, finite if skip_nonfinite else None)
        metrics = {
            "loss": stats["loss_sum"] / denominator,
            "accuracy": stats["correct_tokens"] / denominator,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "num_target_tokens": num_tokens,
            "skipped": (1.0 - finite.astype(jnp.float32)) if skip_nonfinite
            else jnp.zeros([], jnp.float32),
        }
        if z_loss:
            metrics["z_loss"] = stats["z_loss_sum"] / denominator
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {k: v.astype(jnp.float32) for k, v in metrics.items()}

    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return _under_partitioner(jitted, partitioner)


def auto_parallel_branches(rows: int, partitioner: Partitioner) -> int:
    """Default `parallel_branches`: on CPU with an unsplit batch, the available cores per device
    of the mesh, lowered to the largest count that divides `rows`; otherwise 1."""
    devices = list(partitioner.mesh.devices.flat)
    if partitioner.num_batch_shards > 1 or not all(d.platform == "cpu" for d in devices):
        return 1
    branches = max(1, _available_cores() // len(devices))
    while branches > 1 and rows % branches:
        branches -= 1
    return branches


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _has_frozen_group(opt_state: Any) -> bool:
    return any(isinstance(x, HeldState) for x in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, HeldState)))


def make_eval_step(model_config: ModelConfig,
                   partitioner: Partitioner) -> Callable[[Any, Batch], Metrics]:
    """eval_step(params, batch) -> metrics (float32 scalars) without dropout.

    `loss_sum` (nats), `num_target_tokens` and `correct_tokens` add up across batches;
    `loss` and `accuracy` are this batch's per-token values.
    """
    model = AlexaTM(training_model_config(model_config))
    params_shardings = partitioner.params_shardings(training_model_config(model_config))
    batch_sharding = NamedSharding(partitioner.mesh, partitioner.batch_spec(1))

    def eval_step(params: Any, batch: Batch) -> Metrics:
        _check_batch(batch)
        logits = model.apply({"params": params}, **model_inputs(batch), deterministic=True)
        stats = token_statistics(logits, batch["decoder_target_tokens"],
                                 batch["decoder_loss_weights"])
        denominator = jnp.maximum(stats["num_target_tokens"], 1.0)
        return {
            "loss_sum": stats["loss_sum"],
            "num_target_tokens": stats["num_target_tokens"],
            "correct_tokens": stats["correct_tokens"],
            "loss": stats["loss_sum"] / denominator,
            "accuracy": stats["correct_tokens"] / denominator,
        }

    jitted = jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding),
                     out_shardings=NamedSharding(partitioner.mesh, PartitionSpec()))
    return _under_partitioner(jitted, partitioner)


def _under_partitioner(jitted: Any, partitioner: Partitioner) -> Callable[..., Any]:
    """Call (and trace) `jitted` with the partitioner's mesh and rules active; the jitted
    function stays reachable as `.jitted` (for `.lower(...)` and memory analysis)."""
    def call(*args: Any) -> Any:
        with partitioner.activate():
            return jitted(*args)
    call.jitted = jitted
    return call
