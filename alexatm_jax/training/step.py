"""The jitted, sharded train and eval steps.

A batch is a dict of global [global_batch, len] arrays with the T5X feature names
(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
*_segment_ids (0 marks padding), optionally *_positions / encoder_token_type_ids), sharded on the
batch axes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from alexatm_jax.host import cores_dividing
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.dropout import batch_block
from alexatm_jax.model.params import model_inputs
from alexatm_jax.model.transformer import AlexaTM, head_is_vocab_major
from alexatm_jax.partitioning import PartitionedFunction, Partitioner
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.guarded_update import guarded_update
from alexatm_jax.training.loss import fused_head_statistics, token_statistics
from alexatm_jax.training.optimizer import (
    FROZEN,
    freeze_labels,
    make_optimizer,
    matches_prefix,
    path_string,
)
from alexatm_jax.training.state import (
    TrainState,
    abstract_train_state,
    train_state_shardings,
    training_model_config,
)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
REQUIRED_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "encoder_segment_ids",
    "decoder_segment_ids",
)


def _check_batch(batch: Batch) -> None:
    """Raise KeyError when a feature the steps need is missing. Segment ids are required: the
    model marks padding by segment id 0 and never infers it from token ids, so without them
    every padded position would be attended to as a real token."""
    missing = [name for name in REQUIRED_FEATURES if name not in batch]
    if missing:
        hint = (
            " (the model cannot tell padding from tokens without segment ids: 1 on each "
            "example's tokens, 0 on padding; SeqIO's unpacked feature converter omits them, "
            "tasks.get_dataset adds them)"
            if any(name.endswith("_segment_ids") for name in missing)
            else ""
        )
        raise KeyError(f"batch lacks features {missing}; it has {sorted(batch)}{hint}")


def _microbatches(batch: Batch, num: int, sharding: NamedSharding) -> Batch:
    """[B, ...] -> [num, B/num, ...] where microbatch i holds rows i, i+num, ... so that every
    device keeps contributing rows to every microbatch."""

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        spec = PartitionSpec(None, *sharding.spec)
        return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, spec))

    return {name: split(x) for name, x in batch.items()}


def make_train_step(config: TrainConfig, partitioner: Partitioner) -> PartitionedFunction:
    """train_step(state, batch, rng) -> (new_state, metrics) for `config`'s model, optimizer
    (`make_optimizer(config.optimizer_config, config.train_steps)`) and step policies; the
    input state is donated.

    The loss is token cross-entropy (+ `config.z_loss`) summed over the whole global batch and
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
    gradient up to float rounding, the same dropout masks); XLA:CPU runs independent ops side
    by side. None picks `auto_parallel_branches` (cores per device on CPU). While
    step < freeze_steps, no gradient flows into the optimizer's frozen subtrees at all.
    """
    optimizer = make_optimizer(config.optimizer_config, config.train_steps)
    state_shardings = train_state_shardings(config.model_config, optimizer, partitioner)
    batch_sharding = partitioner.batch_sharding(1)
    gradients = _gradient_function(config, optimizer, state_shardings.params, batch_sharding)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        branches = _checked_branches(config, batch, partitioner)
        num_tokens = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))
        denominator = jnp.maximum(num_tokens, 1.0)
        key = jax.random.fold_in(rng, state.step)
        grads, stats = gradients(state.params, batch, key, denominator, state.step, branches)
        if config.inject_nonfinite_steps:
            poison = jnp.where(
                jnp.isin(state.step + 1, jnp.asarray(config.inject_nonfinite_steps)),
                jnp.float32(jnp.nan),
                jnp.float32(0.0),
            )
            grads = jax.tree.map(lambda g: g + poison.astype(g.dtype), grads)
            stats = dict(stats, loss_sum=stats["loss_sum"] + poison)
        grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
        return _apply_update(
            optimizer, state, grads, stats, denominator, num_tokens, with_z_loss=bool(config.z_loss)
        )

    return partitioner.partition(
        train_step,
        in_shardings=(state_shardings, batch_sharding, partitioner.replicated),
        out_shardings=(state_shardings, partitioner.replicated),
        donate_argnums=(0,),
    )


def _checked_batch_rows(config: TrainConfig, batch: Batch, partitioner: Partitioner) -> int:
    """Rows of one microbatch; raises ValueError when the batch does not split evenly."""
    _check_batch(batch)
    global_batch = batch["decoder_target_tokens"].shape[0]
    accum = config.grad_accum_steps
    if global_batch % accum:
        raise ValueError(
            f"global batch {global_batch} is not divisible by grad_accum_steps={accum}"
        )
    if (global_batch // accum) % partitioner.num_batch_shards:
        raise ValueError(
            f"a microbatch of {global_batch // accum} rows cannot be split over the "
            f"{partitioner.num_batch_shards} batch shards; use a global batch that is a "
            f"multiple of grad_accum_steps x {partitioner.num_batch_shards}"
        )
    return global_batch // accum


def _checked_branches(config: TrainConfig, batch: Batch, partitioner: Partitioner) -> int:
    """The number of gradient branches per microbatch (`parallel_branches`, resolved)."""
    rows = _checked_batch_rows(config, batch, partitioner)
    branches = (
        config.parallel_branches
        if config.parallel_branches is not None
        else auto_parallel_branches(rows, partitioner)
    )
    if branches < 1 or rows % branches:
        raise ValueError(
            f"parallel_branches={branches} must be >= 1 and divide the {rows} rows of a microbatch"
        )
    return branches


def _micro_objective(config: TrainConfig) -> Callable[..., Any]:
    """objective(params, micro, key, denominator) -> (loss / denominator, token statistics)."""
    model = AlexaTM(training_model_config(config.model_config))
    vocab_major = head_is_vocab_major(config.model_config)

    def objective(params, micro, key, denominator):
        rngs = {"dropout": key}
        targets, weights = micro["decoder_target_tokens"], micro["decoder_loss_weights"]
        if config.fused_head:
            hidden, kernel, bias = model.apply(
                {"params": params},
                **model_inputs(micro),
                deterministic=False,
                rngs=rngs,
                method=AlexaTM.hidden_and_head,
            )
            stats = fused_head_statistics(
                hidden, kernel, bias, targets, weights, config.z_loss, vocab_major=vocab_major
            )
        else:
            logits = model.apply(
                {"params": params}, **model_inputs(micro), deterministic=False, rngs=rngs
            )
            stats = token_statistics(logits, targets, weights, config.z_loss)
        return (stats["loss_sum"] + stats["z_loss_sum"]) / denominator, stats

    return objective


def _gradient_function(
    config: TrainConfig,
    optimizer: optax.GradientTransformation,
    params_shardings: Any,
    batch_sharding: NamedSharding,
) -> Callable[..., tuple[Any, Metrics]]:
    """gradients(params, batch, key, denominator, step, branches) -> (grads, summed stats):
    microbatches accumulated by a scan, each split into `branches` independent branches, no
    gradient into the optimizer's buffers (zeros: XLA computes none) and none into frozen
    subtrees while step < freeze_steps."""
    single_grad_fn = jax.grad(_micro_objective(config), has_aux=True)
    accum = config.grad_accum_steps
    buffers = config.optimizer_config.buffers

    def grad_fn(params, micro, key, denominator, branches):
        # Each block of rows draws the whole batch's dropout masks' rows (dropout.batch_block).
        if branches == 1:
            return single_grad_fn(params, micro, key, denominator)
        results = []
        for j in range(branches):
            rows = jax.tree.map(lambda x: x.reshape((branches, -1) + x.shape[1:])[j], micro)
            with batch_block(j, branches):
                results.append(single_grad_fn(params, rows, key, denominator))
        return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *results)

    def gradients(params, batch, key, denominator, branches):
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: (
                jax.lax.stop_gradient(p) if matches_prefix(path_string(path), buffers) else p
            ),
            params,
        )
        if accum == 1:
            return grad_fn(params, batch, jax.random.fold_in(key, 0), denominator, branches)
        micro = _microbatches(batch, accum, batch_sharding)

        def accumulate(carry, xs):
            index, micro_batch = xs
            grads, stats = grad_fn(
                params, micro_batch, jax.random.fold_in(key, index), denominator, branches
            )
            return jax.tree.map(jnp.add, carry, (grads, stats)), None

        zeros = jax.tree.map(
            jnp.zeros_like,
            jax.eval_shape(
                single_grad_fn, params, jax.tree.map(lambda x: x[0], micro), key, denominator
            ),
        )
        zeros = (jax.lax.with_sharding_constraint(zeros[0], params_shardings), zeros[1])
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum, dtype=jnp.int32), micro))
        return total

    freeze = config.optimizer_config
    if not (freeze.freeze_prefixes and freeze.freeze_steps > 0):
        return lambda params, batch, key, denominator, step, branches: gradients(
            params, batch, key, denominator, branches
        )
    abstract = abstract_train_state(config.model_config, optimizer)
    frozen_mask = jax.tree.map(
        lambda label: label == FROZEN, freeze_labels(freeze.freeze_prefixes)(abstract.params)
    )

    def gradients_maybe_frozen(params, batch, key, denominator, step, branches):
        stopped = jax.tree.map(
            lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen_mask
        )
        return jax.lax.cond(
            step < freeze.freeze_steps,
            lambda: gradients(stopped, batch, key, denominator, branches),
            lambda: gradients(params, batch, key, denominator, branches),
        )

    return gradients_maybe_frozen


def _apply_update(
    optimizer: optax.GradientTransformation,
    state: TrainState,
    grads: Any,
    stats: Metrics,
    denominator: jax.Array,
    num_tokens: jax.Array,
    *,
    with_z_loss: bool,
) -> tuple[TrainState, Metrics]:
    """The optimizer update, skipped (params and float statistics kept, counters advanced:
    `guarded_update`) when the objective or the gradient norm is not finite; and the step's
    float32 metrics."""
    grad_norm = optax.global_norm(grads)
    objective = (stats["loss_sum"] + stats["z_loss_sum"]) / denominator
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    params, opt_state, learning_rate = guarded_update(
        optimizer, grads, state.params, state.opt_state, finite
    )
    metrics = {
        "loss": stats["loss_sum"] / denominator,
        "accuracy": stats["correct_tokens"] / denominator,
        "grad_norm": grad_norm,
        "learning_rate": learning_rate,
        "num_target_tokens": num_tokens,
        "skipped": 1.0 - finite.astype(jnp.float32),
    }
    if with_z_loss:
        metrics["z_loss"] = stats["z_loss_sum"] / denominator
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def auto_parallel_branches(rows: int, partitioner: Partitioner) -> int:
    """Default `parallel_branches`: on CPU with an unsplit batch, the available cores per device
    of the mesh, lowered to the largest count that divides `rows`; otherwise 1."""
    devices = list(partitioner.mesh.devices.flat)
    if partitioner.num_batch_shards > 1 or not all(d.platform == "cpu" for d in devices):
        return 1
    return cores_dividing(rows, len(devices))


def make_eval_step(
    model_config: ModelConfig, partitioner: Partitioner
) -> Callable[[Any, Batch], Metrics]:
    """eval_step(params, batch) -> metrics (float32 scalars) without dropout.

    `loss_sum` (nats), `num_target_tokens` and `correct_tokens` add up across batches;
    `loss` and `accuracy` are this batch's per-token values.
    """
    model = AlexaTM(training_model_config(model_config))
    params_shardings = partitioner.params_shardings(training_model_config(model_config))

    def eval_step(params: Any, batch: Batch) -> Metrics:
        _check_batch(batch)
        logits = model.apply({"params": params}, **model_inputs(batch), deterministic=True)
        stats = token_statistics(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        )
        denominator = jnp.maximum(stats["num_target_tokens"], 1.0)
        return {
            "loss_sum": stats["loss_sum"],
            "num_target_tokens": stats["num_target_tokens"],
            "correct_tokens": stats["correct_tokens"],
            "loss": stats["loss_sum"] / denominator,
            "accuracy": stats["correct_tokens"] / denominator,
        }

    return partitioner.partition(
        eval_step,
        in_shardings=(params_shardings, partitioner.batch_sharding(1)),
        out_shardings=partitioner.replicated,
    )
