"""The CPU train-step speed-ups change no numbers: the LM head fused with the loss, the
backward-pass cotangent barriers, the packed Threefry dropout masks, the parallel gradient
branches, 2-D dense products and side-by-side attention projections, the attention core's
backward pass and head groups, the skippable optimizer update; plus the benchmarks' load
record and reference workers."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexatm_jax.model import AlexaTM, ModelConfig, init_params
from alexatm_jax.model.dropout import Dropout, keep_mask, packed_keep_mask
from alexatm_jax.model.layers import matrix_product
from alexatm_jax.model.transformer import head_is_vocab_major
from alexatm_jax.training import OptimizerConfig, applied_learning_rate, make_optimizer
from alexatm_jax.training.guarded_update import guarded_update
from alexatm_jax.training.loss import fused_head_statistics, token_statistics

SMALL = ModelConfig(
    vocab_size=97,
    d_model=32,
    num_encoder_layers=1,
    num_decoder_layers=2,
    num_encoder_heads=2,
    num_decoder_heads=2,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_positions=16,
    dropout_rate=0.0,
    init_std=0.3,
)


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = {
        "encoder_input_tokens": rng.integers(2, 97, (3, 7)).astype(np.int32),
        "decoder_input_tokens": rng.integers(2, 97, (3, 5)).astype(np.int32),
    }
    targets = rng.integers(0, 97, (3, 5)).astype(np.int32)
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    return batch, targets, weights


def _assert_trees_close(a, b, rtol=1e-5):
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_fused_head_matches_logits_then_loss(tied, z_loss):
    config = SMALL.replace(tie_word_embeddings=tied, share_embeddings=tied)
    params = init_params(config, jax.random.key(0))
    batch, targets, weights = _inputs()
    model = AlexaTM(config)

    def unfused(p):
        stats = token_statistics(model.apply({"params": p}, **batch), targets, weights, z_loss)
        return stats["loss_sum"] + stats["z_loss_sum"], stats

    def fused(p):
        hidden, kernel, bias = model.apply({"params": p}, **batch, method=AlexaTM.hidden_and_head)
        stats = fused_head_statistics(
            hidden, kernel, bias, targets, weights, z_loss, vocab_major=head_is_vocab_major(config)
        )
        return stats["loss_sum"] + stats["z_loss_sum"], stats

    (value, stats), grads = jax.value_and_grad(unfused, has_aux=True)(params)
    (fused_value, fused_stats), fused_grads = jax.jit(jax.value_and_grad(fused, has_aux=True))(
        params
    )
    np.testing.assert_allclose(float(fused_value), float(value), rtol=1e-6)
    for name in stats:
        np.testing.assert_allclose(
            float(fused_stats[name]), float(stats[name]), rtol=1e-6, atol=1e-6
        )
    _assert_trees_close(grads, fused_grads)
    # Without differentiation the fused path is just the statistics (no gradient work).
    hidden, kernel, bias = model.apply({"params": params}, **batch, method=AlexaTM.hidden_and_head)
    plain = fused_head_statistics(
        hidden, kernel, bias, targets, weights, z_loss, vocab_major=head_is_vocab_major(config)
    )
    np.testing.assert_allclose(float(plain["loss_sum"]), float(stats["loss_sum"]), rtol=1e-6)


def test_accuracy_counts_the_argmax():
    logits = jnp.array([[[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]]])
    stats = token_statistics(logits, jnp.array([[1, 2]]), jnp.ones((1, 2)))
    assert float(stats["correct_tokens"]) == 1.0


def test_cotangent_barriers_change_no_gradient():
    config = SMALL.replace(dropout_rate=0.1)
    params = init_params(config, jax.random.key(0))
    batch, targets, weights = _inputs(1)

    def loss(p, mode):
        logits = AlexaTM(config.replace(cotangent_barriers=mode)).apply(
            {"params": p}, **batch, deterministic=False, rngs={"dropout": jax.random.key(3)}
        )
        return token_statistics(logits, targets, weights)["loss_sum"]

    with_barriers = jax.jit(jax.grad(lambda p: loss(p, "on")))(params)
    without = jax.jit(jax.grad(lambda p: loss(p, "off")))(params)
    _assert_trees_close(without, with_barriers)


def test_packed_dropout_masks_are_deterministic_and_keep_the_right_share():
    key = jax.random.key(7)
    mask = np.asarray(jax.jit(lambda k: packed_keep_mask(k, (8, 64, 130), 0.1))(key))
    assert mask.shape == (8, 64, 130)
    assert abs(mask.mean() - 0.9) < 0.005
    again = np.asarray(packed_keep_mask(key, (8, 64, 130), 0.1))
    np.testing.assert_array_equal(mask, again)
    other = np.asarray(packed_keep_mask(jax.random.key(8), (8, 64, 130), 0.1))
    assert (mask != other).mean() > 0.1
    # Every element gets its own 16-bit draw: no two rows or columns repeat.
    assert len({mask[0, i].tobytes() for i in range(64)}) == 64


@pytest.mark.parametrize("impl", ["threefry_packed", "threefry2x32", "rbg", "unsafe_rbg"])
def test_every_dropout_rng_impl_scales_kept_values(impl):
    x = jnp.ones((4, 16, 32))
    y = Dropout(0.25, impl).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    assert 0.65 < kept.mean() < 0.85
    assert keep_mask(jax.random.key(1), (3,), 0.5, impl).dtype == jnp.bool_
    assert Dropout(0.25, impl).apply({}, x, deterministic=True) is x


def test_unknown_dropout_rng_impl_is_rejected():
    with pytest.raises(ValueError, match="dropout_rng_impl must be one of"):
        SMALL.replace(dropout_rng_impl="philox4x32")
    with pytest.raises(ValueError, match="cotangent_barriers must be one of"):
        SMALL.replace(cotangent_barriers="sometimes")


def test_parallel_branches_give_the_same_step():
    from alexatm_jax.partitioning import MeshConfig, Partitioner
    from alexatm_jax.training import (
        OptimizerConfig,
        create_train_state,
        make_optimizer,
        make_train_step,
    )
    from alexatm_jax.training.config import TrainConfig
    from alexatm_jax.training.step import auto_parallel_branches

    partitioner = Partitioner(MeshConfig(), "fsdp")
    # eps=1 makes the first AdamW update ~linear in the gradient (not its sign).
    optimizer_config = OptimizerConfig(learning_rate=1e-2, eps=1.0)
    optimizer = make_optimizer(optimizer_config, 10)
    batch, targets, weights = _inputs(2)
    batch = dict(
        batch,
        decoder_target_tokens=targets,
        decoder_loss_weights=weights,
        encoder_segment_ids=np.ones_like(batch["encoder_input_tokens"]),
        decoder_segment_ids=np.ones_like(batch["decoder_input_tokens"]),
    )
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 6 rows
    results = {}
    config = SMALL.replace(dropout_rate=0.2)  # each branch draws the whole batch's masks
    for branches in (1, 2, 3):
        state = create_train_state(config, optimizer, partitioner, jax.random.key(0))
        step = make_train_step(
            TrainConfig(
                model_config=config,
                train_steps=10,
                batch_size=6,
                optimizer_config=optimizer_config,
                parallel_branches=branches,
            ),
            partitioner,
        )
        state, metrics = step(state, partitioner.shard_batch(batch), jax.random.key(1))
        results[branches] = (jax.device_get(state.params), jax.device_get(metrics))
    for branches in (2, 3):
        params, metrics = results[branches]
        for name in ("loss", "accuracy", "grad_norm", "num_target_tokens"):
            np.testing.assert_allclose(metrics[name], results[1][1][name], rtol=1e-5)
        _assert_trees_close(results[1][0], params)
    cores = len(os.sched_getaffinity(0))
    assert auto_parallel_branches(12 * cores, partitioner) == cores
    assert auto_parallel_branches(1, partitioner) == 1
    with pytest.raises(ValueError, match="must be >= 1 and divide"):
        make_train_step(
            TrainConfig(
                model_config=config,
                train_steps=10,
                batch_size=6,
                optimizer_config=optimizer_config,
                parallel_branches=4,
            ),
            partitioner,
        )(state, partitioner.shard_batch(batch), jax.random.key(1))


@pytest.mark.parametrize("impl", ["threefry_packed", "threefry2x32"])
def test_batch_blocks_draw_the_whole_batch_masks(impl):
    from alexatm_jax.model.dropout import batch_block

    key = jax.random.key(5)
    whole = np.asarray(keep_mask(key, (6, 4, 8), 0.3, impl))
    for blocks in (2, 3):
        rows = 6 // blocks
        for block in range(blocks):
            with batch_block(block, blocks):
                part = np.asarray(keep_mask(key, (rows, 4, 8), 0.3, impl))
            np.testing.assert_array_equal(part, whole[block * rows : (block + 1) * rows])


def test_benchmark_load_record_marks_a_busy_machine(monkeypatch, repo_root):
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    import machine_load

    monkeypatch.setattr(machine_load, "_loadavg", lambda: 0.5)
    quiet = machine_load.LoadMonitor(interval_s=0.01)
    record = quiet.finish(cores_used=64)
    assert record["cores"] >= 1 and record["cores_used"] == 64
    assert record["cores_after"] == record["cores"]
    assert record["load_before"] == record["load_after"] == 0.5
    monkeypatch.setattr(machine_load, "_loadavg", lambda: 9.0)
    busy = machine_load.LoadMonitor(interval_s=0.01).finish(cores_used=2)
    assert busy["busy"] and "above the 2 core(s)" in busy["busy_reasons"][0]
    assert "WARNING" in machine_load.LoadMonitor.describe(busy)
    sys.modules.pop("machine_load", None)


# Marked slow: it runs the benchmark script end to end (about 1 minute).
@pytest.mark.slow
def test_train_step_benchmark_times_the_reference_under_both_allocators(repo_root, tmp_path):
    """benchmarks/train_step.py (tiny settings, via quiet_tables.py --smoke): the reference runs
    in two worker processes, glibc's defaults and ours, and the JSON says which is which."""
    import json
    import subprocess

    subprocess.run(
        [
            sys.executable,
            str(repo_root / "benchmarks" / "quiet_tables.py"),
            "--smoke",
            "--only",
            "train",
            "--out_dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=repo_root,
    )
    result = json.loads((tmp_path / "train_step.json").read_text())
    assert result["host_malloc"]["reference"] == "system"
    assert result["host_malloc"]["reference_retain"] == "retain"
    for name in ("reference", "reference_retain"):
        assert result[f"ratio_ours_over_{name}"] > 0
        assert len(result[name]["all_step_times_s"]) == len(result["ours"]["all_step_times_s"])
        assert all(cpu > 0 for cpu in result[name]["all_cpu_times_s"])  # the worker's CPU time


@pytest.mark.parametrize("num_in_axes", [1, 2])
def test_matrix_product_equals_dot_general_with_its_gradients(num_in_axes):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 4, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((4, 5, 6)[2 - num_in_axes :] + (7,)), jnp.float32)
    contract = tuple(range(4 - num_in_axes, 4)), tuple(range(num_in_axes))

    def plain(x, kernel):
        return jnp.sum(jnp.sin(jax.lax.dot_general(x, kernel, (contract, ((), ())))))

    def flat(x, kernel):
        return jnp.sum(jnp.sin(matrix_product(x, kernel, num_in_axes, jnp.float32)))

    expected_shape = x.shape[: 4 - num_in_axes] + kernel.shape[num_in_axes:]
    assert matrix_product(x, kernel, num_in_axes, jnp.float32).shape == expected_shape
    _assert_trees_close(
        jax.grad(plain, argnums=(0, 1))(x, kernel), jax.grad(flat, argnums=(0, 1))(x, kernel)
    )
    np.testing.assert_allclose(plain(x, kernel), flat(x, kernel), rtol=1e-5)


def test_guarded_update_applies_or_skips_keeping_the_schedule():
    optimizer = make_optimizer(OptimizerConfig(), 100)
    params = {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.5, params)
    state = optimizer.init(params)
    updates, expected_state = optimizer.update(grads, state, params)
    expected = jax.tree.map(lambda p, u: p + u, params, updates)
    applied = jax.jit(guarded_update, static_argnums=0)(
        optimizer, grads, params, state, jnp.bool_(True)
    )
    _assert_trees_close(
        (expected, expected_state, applied_learning_rate(expected_state)), applied, rtol=1e-6
    )
    kept, kept_state, rate = jax.jit(guarded_update, static_argnums=0)(
        optimizer, grads, params, state, jnp.bool_(False)
    )
    for new, old, advanced in zip(
        jax.tree.leaves(kept_state), jax.tree.leaves(state), jax.tree.leaves(expected_state)
    ):
        integer = jnp.issubdtype(new.dtype, jnp.integer)
        np.testing.assert_array_equal(new, advanced if integer else old)
    _assert_trees_close(params, kept, rtol=0)
    assert float(rate) == float(applied_learning_rate(expected_state))


def test_cpu_only_program_shapes_are_off_in_plans_for_accelerators():
    """ "auto" cotangent barriers and flat Dense products are for XLA:CPU: a TPU or GPU plan,
    made on a CPU host, compiles the program that chip would run."""
    from alexatm_jax.planning import planned_model_config

    config = SMALL.replace(attention_impl="splash")
    tpu = planned_model_config(config, "tpu")
    assert (tpu.cotangent_barriers, tpu.flat_dense, tpu.attention_impl) == ("off", "off", "splash")
    gpu = planned_model_config(config.replace(flat_dense="on"), "cuda")
    assert (gpu.flat_dense, gpu.attention_impl) == ("on", "dot_product")  # explicit: kept
    assert planned_model_config(config, "cpu").cotangent_barriers == "auto"


def test_flat_dense_and_dot_general_give_the_same_model():
    batch, _, _ = _inputs(2)
    outputs = []
    for mode in ("on", "off"):
        config = SMALL.replace(flat_dense=mode)
        params = init_params(config, jax.random.key(0))
        outputs.append(
            AlexaTM(config).apply(
                {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
            )
        )
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_attention_core_gives_autodiffs_output_and_gradients(groups):
    """The hand-written backward (rowsum(dO * O) for the softmax term) and the head groups
    change no number beyond rounding, fully masked query rows included."""
    from alexatm_jax.model.attention_core import attention, attention_probabilities

    keys = jax.random.split(jax.random.key(3), 5)
    q = jax.random.normal(keys[0], (2, 5, 4, 8))  # [batch, q_len, heads, head_dim]
    k, v = (jax.random.normal(keys[i], (2, 6, 4, 8)) for i in (1, 2))
    mask = jax.random.bernoulli(keys[3], 0.7, (2, 1, 5, 6)).at[0, 0, 2].set(False)
    cotangent = jax.random.normal(keys[4], (2, 5, 4, 8))

    def plain(q, k, v):
        weights = attention_probabilities(q, k, mask, 0.3)
        return jnp.sum(jnp.einsum("bhqk,bkhd->bqhd", weights, v) * cotangent)

    def core(q, k, v):
        return jnp.sum(attention(q, k, v, mask, 0.3, groups) * cotangent)

    np.testing.assert_allclose(core(q, k, v), plain(q, k, v), rtol=1e-6)
    _assert_trees_close(jax.grad(core, (0, 1, 2))(q, k, v), jax.grad(plain, (0, 1, 2))(q, k, v))


def test_head_groups_divide_the_heads_up_to_the_cores(monkeypatch):
    from alexatm_jax import host
    from alexatm_jax.model import attention_core

    monkeypatch.setattr(host, "available_cores", lambda: 4)
    assert attention_core.head_groups(8, split=True) == 4
    assert attention_core.head_groups(6, split=True) == 3
    assert attention_core.head_groups(2, split=True) == 2
    assert attention_core.head_groups(8, split=False) == 1


def test_side_by_side_projections_give_the_same_gradients():
    """flat_dense 'on' also computes q/k/v (k/v for cross-attention) as one product."""
    batch, _, _ = _inputs(4)
    grads = []
    for mode in ("on", "off"):
        config = SMALL.replace(flat_dense=mode, split_attention_heads=mode)
        params = init_params(config, jax.random.key(0))
        out = lambda p, config=config: jnp.sum(
            AlexaTM(config).apply(
                {"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
            )
            ** 2
        )
        grads.append(jax.grad(out)(params))
    _assert_trees_close(grads[0], grads[1])
