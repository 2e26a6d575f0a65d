"""The optimizer, train/eval steps and FLOP accounting on one CPU device (plus the 8-device
equivalence measured by multidevice_checks)."""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from multidevice_checks import run_multidevice_checks
from tiny_config import tiny_model_config

from alexatm_jax.model import AlexaTM, param_shapes
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.training import (
    OptimizerConfig,
    create_train_state,
    decay_mask,
    learning_rate_schedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.flops import forward_flops_per_example, mfu, peak_flops_per_device
from alexatm_jax.training.loss import token_statistics
from alexatm_jax.training.optimizer import FROZEN, HeldState, path_string

TINY = tiny_model_config(encoder_ffn_dim=48, decoder_ffn_dim=48, max_positions=16)
TOTAL_STEPS = 20
FROZEN_PREFIXES = ("encoder", "token_embedder")
Z_LOSS = 1e-4


def _batch(seed: int, batch: int = 4, inputs: int = 8, targets: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, targets + 1, batch)
    weights = (np.arange(targets)[None] < lengths[:, None]).astype(np.float32)
    return {
        "encoder_input_tokens": rng.integers(3, 64, (batch, inputs)).astype(np.int32),
        "decoder_input_tokens": rng.integers(3, 64, (batch, targets)).astype(np.int32),
        "decoder_target_tokens": rng.integers(3, 64, (batch, targets)).astype(np.int32),
        "decoder_loss_weights": weights,
        "decoder_segment_ids": weights.astype(np.int32),
        "encoder_segment_ids": np.ones((batch, inputs), np.int32),
    }


def _snapshot(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def _subtree_equal(a, b, frozen: bool) -> bool:
    """All leaves under FROZEN_PREFIXES (frozen=True) or outside them (False) are equal."""
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    return all(
        np.array_equal(x, y)
        for (path, x), y in zip(flat_a, flat_b)
        if path_string(path).startswith(FROZEN_PREFIXES) == frozen
    )


PLAIN = OptimizerConfig(
    eps=1.0, weight_decay=0.0, clip_norm=0.0, learning_rate=1e-2, end_learning_rate=1e-2
)


def step_config(optimizer_config: OptimizerConfig, **overrides) -> TrainConfig:
    """The TrainConfig of a TINY train step over TOTAL_STEPS with `optimizer_config`."""
    return TrainConfig(
        model_config=TINY,
        train_steps=TOTAL_STEPS,
        batch_size=4,
        optimizer_config=optimizer_config,
        **overrides,
    )


@pytest.fixture(scope="module")
def partitioner():
    return Partitioner(MeshConfig(), "fsdp")


@pytest.fixture(scope="module")
def plain(partitioner):
    """(optimizer, step with z-loss, fresh-state factory). AdamW with eps=1 and no clipping or
    decay, so updates are close to linear in the gradient."""
    cfg = PLAIN
    tx = make_optimizer(cfg, TOTAL_STEPS)
    initial = create_train_state(TINY, tx, partitioner, jax.random.key(0))
    fresh = lambda: jax.tree.map(jnp.copy, initial)  # the step donates its input state
    return tx, make_train_step(step_config(cfg, z_loss=Z_LOSS), partitioner), fresh


# ---------------------------------------------------------------- schedule, mask, optimizer
def test_learning_rate_decays_linearly_from_1e4_to_5e6():
    schedule = learning_rate_schedule(OptimizerConfig(), 1000)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(500)) == pytest.approx((1e-4 + 5e-6) / 2)
    assert float(schedule(1000)) == pytest.approx(5e-6)
    assert float(schedule(5000)) == pytest.approx(5e-6)
    warm = learning_rate_schedule(OptimizerConfig(warmup_steps=10), 1000)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(5e-5)
    assert float(warm(10)) == pytest.approx(1e-4) and float(warm(1000)) == pytest.approx(5e-6)


def test_weight_decay_mask_excludes_biases_and_layer_norms():
    params = param_shapes(TINY)
    flat = {
        path_string(p): v for p, v in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    }
    assert flat["final_logits_bias"] is False
    assert flat["encoder/layers_0/attention_norm/scale"] is False
    assert flat["encoder/layers_0/attention_norm/bias"] is False
    assert flat["decoder/layers_0/mlp/wi/bias"] is False
    assert flat["encoder/layers_0/mlp/wi/kernel"] is True
    assert flat["token_embedder/embedding"] is True
    assert flat["lm_head"] is True
    assert sum(flat.values()) == sum(1 for p in flat if not p.endswith(("bias", "scale")))


def test_optimizer_config_validation():
    with pytest.raises(ValueError, match="go together"):
        OptimizerConfig(freeze_prefixes=("encoder",))
    with pytest.raises(ValueError, match="name must be one of"):
        OptimizerConfig(name="sgd")


def test_frozen_group_holds_then_thaws_with_fresh_adam_and_global_schedule():
    """Toy tree: no update and no state change while frozen; at thaw the first update is a fresh
    Adam step (|update| = lr) with the learning rate of the global schedule."""
    cfg = OptimizerConfig(
        freeze_prefixes=("encoder",), freeze_steps=3, weight_decay=0.0, clip_norm=0.0, eps=1e-12
    )
    tx = make_optimizer(cfg, 10)
    params = {"encoder": {"w": jnp.ones(3)}, "decoder": {"w": jnp.ones(3)}}
    grads = {"encoder": {"w": jnp.array([0.5, -2.0, 3.0])}, "decoder": {"w": jnp.ones(3)}}
    state = tx.init(params)
    frozen_state = _frozen_inner(state)
    schedule = learning_rate_schedule(cfg, 10)
    for step in range(4):
        updates, state = tx.update(grads, state, params)
        if step < 3:
            assert np.all(np.asarray(updates["encoder"]["w"]) == 0)
            assert jax.tree.all(jax.tree.map(np.array_equal, _frozen_inner(state), frozen_state))
        else:
            np.testing.assert_allclose(
                np.abs(updates["encoder"]["w"]), float(schedule(3)), rtol=1e-5
            )
        assert np.all(np.abs(np.asarray(updates["decoder"]["w"])) > 0)


def _frozen_inner(state):
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, HeldState))
        if isinstance(x, HeldState)
    ]
    return found[0].inner_state


def test_frozen_gradients_are_left_out_of_the_clipping_norm():
    cfg = OptimizerConfig(
        freeze_prefixes=("encoder",),
        freeze_steps=5,
        clip_norm=1.0,
        weight_decay=0.0,
        b1=0.0,
        eps=1e-12,
    )
    reference = make_optimizer(
        OptimizerConfig(clip_norm=1.0, weight_decay=0.0, b1=0.0, eps=1e-12), 10
    )
    params = {"encoder": {"w": jnp.ones(2)}, "decoder": {"w": jnp.ones(2)}}
    grads = {"encoder": {"w": jnp.array([300.0, 400.0])}, "decoder": {"w": jnp.array([0.3, 0.4])}}
    frozen_updates, _ = make_optimizer(cfg, 10).update(
        grads, make_optimizer(cfg, 10).init(params), params
    )
    only_decoder = {"decoder": {"w": grads["decoder"]["w"]}}
    ref_updates, _ = reference.update(only_decoder, reference.init({"decoder": params["decoder"]}))
    np.testing.assert_allclose(
        frozen_updates["decoder"]["w"], ref_updates["decoder"]["w"], rtol=1e-6
    )


def test_freeze_prefix_that_matches_nothing_is_an_error():
    tx = make_optimizer(OptimizerConfig(freeze_prefixes=("encoderr",), freeze_steps=1), 10)
    with pytest.raises(ValueError, match="match no parameter"):
        tx.init({"encoder": {"w": jnp.ones(2)}})


# ---------------------------------------------------------------- loss and FLOPs
def test_token_statistics_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    stats = token_statistics(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2
    )
    log_z = np.log(np.exp(logits).sum(-1))
    ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    assert float(stats["loss_sum"]) == pytest.approx((ce * weights).sum(), rel=1e-5)
    assert float(stats["z_loss_sum"]) == pytest.approx(1e-2 * (log_z**2 * weights).sum(), rel=1e-5)
    assert float(stats["num_target_tokens"]) == 3.0
    correct = (logits.argmax(-1) == targets) * weights
    assert float(stats["correct_tokens"]) == correct.sum()


def _jaxpr_matmul_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
    for sub in jax.extend.core.subjaxprs(jaxpr):
        total += _jaxpr_matmul_flops(sub)
    return total


def test_forward_flops_formula_matches_the_traced_matmuls():
    """Counting every dot_general of the traced forward gives the formula plus the masked half of
    the causal self-attention, which the formula deliberately leaves out."""
    cfg = TINY.replace(num_encoder_layers=2, encoder_ffn_dim=40, num_decoder_heads=4)
    s, t = 7, 5
    params = param_shapes(cfg)
    jaxpr = jax.make_jaxpr(
        lambda p: AlexaTM(cfg).apply(
            {"params": p}, jnp.zeros((1, s), jnp.int32), jnp.zeros((1, t), jnp.int32)
        )
    )(params)
    masked_half = cfg.num_decoder_layers * (4 * t * t * cfg.d_model - 2 * t * (t + 1) * cfg.d_model)
    assert _jaxpr_matmul_flops(jaxpr.jaxpr) == forward_flops_per_example(cfg, s, t) + masked_half


def test_peak_flops_lookup_and_mfu():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("TPU v5 lite") == 197e12
    assert peak_flops_per_device("TPU v4", "float32") == 275e12
    assert peak_flops_per_device("cpu", cpu_peak_flops=1e11) == 1e11
    assert peak_flops_per_device("cpu") is None
    assert mfu(4e12, 2.0, 4, 1e12) == pytest.approx(0.5)


# ---------------------------------------------------------------- train / eval steps
def test_sharded_training_matches_one_device_over_five_steps():
    checks = run_multidevice_checks()
    np.testing.assert_allclose(checks["mesh_losses"], checks["single_losses"], atol=1e-5, rtol=0)
    assert checks["single_losses"][-1] != checks["single_losses"][0]


def test_train_step_reports_metrics_and_eval_agrees(partitioner, plain):
    _, step, fresh = plain
    state = fresh()
    params_before = _snapshot(state.params)
    batch = partitioner.shard_batch(_batch(0))
    eval_metrics = make_eval_step(TINY, partitioner)(state.params, batch)
    state, metrics = step(state, batch, jax.random.key(1))
    assert set(metrics) == {
        "loss",
        "accuracy",
        "grad_norm",
        "learning_rate",
        "num_target_tokens",
        "skipped",
        "z_loss",
    }
    assert 0 < float(metrics["z_loss"]) < 1e-2
    assert int(state.step) == 1 and float(metrics["skipped"]) == 0.0
    assert float(metrics["num_target_tokens"]) == float(_batch(0)["decoder_loss_weights"].sum())
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
    assert float(metrics["loss"]) == pytest.approx(float(eval_metrics["loss"]), rel=1e-6)
    assert float(eval_metrics["loss_sum"]) == pytest.approx(
        float(eval_metrics["loss"]) * float(eval_metrics["num_target_tokens"]), rel=1e-6
    )
    assert not _subtree_equal(_snapshot(state.params), params_before, frozen=False)


def test_gradient_accumulation_equals_one_full_batch(partitioner, plain):
    tx, full_step, fresh = plain
    accumulated_step = make_train_step(
        step_config(PLAIN, grad_accum_steps=2, z_loss=Z_LOSS), partitioner
    )
    batch = partitioner.shard_batch(_batch(1))
    full, full_metrics = full_step(fresh(), batch, jax.random.key(1))
    acc, acc_metrics = accumulated_step(fresh(), batch, jax.random.key(1))
    for name in ("loss", "accuracy", "grad_norm", "num_target_tokens", "z_loss"):
        assert float(acc_metrics[name]) == pytest.approx(float(full_metrics[name]), rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7),
        _snapshot(acc.params),
        _snapshot(full.params),
    )
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps"):
        make_train_step(step_config(PLAIN, grad_accum_steps=3), partitioner)(
            acc, batch, jax.random.key(1)
        )


def test_non_finite_loss_skips_the_update_and_is_counted(partitioner, plain):
    _, step, fresh = plain
    state = fresh()
    poisoned = dict(
        state.params, final_logits_bias=state.params["final_logits_bias"].at[3].set(jnp.nan)
    )
    state = state.replace(params=poisoned)
    before = _snapshot(state)
    state, metrics = step(state, partitioner.shard_batch(_batch(2)), jax.random.key(1))
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 1
    after = _snapshot(state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.params, before.params)
    for new, old in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(before.opt_state)):
        if np.issubdtype(new.dtype, np.integer):
            assert new == old + 1  # counters advance: schedule and freeze windows follow `step`
        else:
            np.testing.assert_array_equal(new, old)


def test_frozen_encoder_does_not_move_for_n_steps_then_moves(partitioner):
    cfg = OptimizerConfig(freeze_prefixes=FROZEN_PREFIXES, freeze_steps=2)
    tx = make_optimizer(cfg, TOTAL_STEPS)
    step = make_train_step(step_config(cfg), partitioner)
    state = create_train_state(TINY, tx, partitioner, jax.random.key(0))
    initial = _snapshot(state.params)
    frozen_opt_state = _snapshot(_frozen_inner(state.opt_state))
    for i in range(3):
        state, metrics = step(state, partitioner.shard_batch(_batch(10 + i)), jax.random.key(1))
        params = _snapshot(state.params)
        assert not _subtree_equal(params, initial, frozen=False)  # decoder trains throughout
        if i < 2:
            assert _subtree_equal(params, initial, frozen=True), f"encoder moved at step {i + 1}"
            assert jax.tree.all(
                jax.tree.map(
                    np.array_equal, _snapshot(_frozen_inner(state.opt_state)), frozen_opt_state
                )
            )
        else:
            assert not _subtree_equal(params, initial, frozen=True), "encoder did not thaw"
        assert float(metrics["skipped"]) == 0.0


def test_frozen_labels_cover_encoder_and_shared_embedding():
    tx = make_optimizer(OptimizerConfig(freeze_prefixes=FROZEN_PREFIXES, freeze_steps=1), 5)
    state = jax.eval_shape(tx.init, param_shapes(TINY))
    labels = state[-1].inner_states  # multi_transform groups
    frozen_paths = [
        path_string(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(
            labels[FROZEN].inner_state.inner_state[0].mu
        )[0]
    ]
    assert frozen_paths and all(p.startswith(FROZEN_PREFIXES) for p in frozen_paths)
    assert "decoder_token_embedder/embedding" not in frozen_paths


# ---------------------------------------------------------------- buffers (final_logits_bias)
def test_buffers_get_no_update_no_state_and_no_share_of_the_clipping_norm():
    cfg = OptimizerConfig(clip_norm=1.0, weight_decay=0.1, b1=0.0, eps=1e-12)
    params = {"final_logits_bias": jnp.ones(3), "decoder": {"w": jnp.ones(2)}}
    grads = {"final_logits_bias": jnp.full(3, 1e3), "decoder": {"w": jnp.array([0.3, 0.4])}}
    tx = make_optimizer(cfg, 10)
    state = tx.init(params)
    paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths and not any("final_logits_bias" in p for p in paths)
    updates, _ = tx.update(grads, state, params)
    assert np.all(np.asarray(updates["final_logits_bias"]) == 0)
    reference = make_optimizer(
        OptimizerConfig(clip_norm=1.0, weight_decay=0.1, b1=0.0, eps=1e-12, buffers=()), 10
    )
    only_decoder = {"decoder": params["decoder"]}
    ref_updates, _ = reference.update(
        {"decoder": grads["decoder"]}, reference.init(only_decoder), only_decoder
    )
    np.testing.assert_allclose(updates["decoder"]["w"], ref_updates["decoder"]["w"], rtol=1e-6)
    trained = make_optimizer(dataclasses.replace(cfg, buffers=()), 10)
    trained_updates, _ = trained.update(grads, trained.init(params), params)
    assert np.all(np.asarray(trained_updates["final_logits_bias"]) != 0)


def test_train_step_leaves_the_logits_bias_as_it_was(partitioner, plain):
    _, step, fresh = plain
    state = fresh()
    state = state.replace(
        params=dict(state.params, final_logits_bias=state.params["final_logits_bias"] + 0.5)
    )
    before = _snapshot(state.params)
    state, metrics = step(state, partitioner.shard_batch(_batch(3)), jax.random.key(1))
    after = _snapshot(state.params)
    np.testing.assert_array_equal(after["final_logits_bias"], before["final_logits_bias"])
    assert not np.array_equal(after["lm_head"], before["lm_head"])
    assert float(metrics["skipped"]) == 0.0


def test_a_buffer_inside_freeze_prefixes_is_refused():
    with pytest.raises(ValueError, match="inside buffers"):
        OptimizerConfig(freeze_prefixes=("final_logits_bias",), freeze_steps=3)
