"""Checkpointing of training runs: Orbax save/restore, keep-N, corrupt fallback, layouts,
parameter-only reads and warm starts (in-process, tiny trees)."""

from __future__ import annotations

import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_config import tiny_model_config

from alexatm_jax.model.params import init_params, param_shapes
from alexatm_jax.training.checkpointing import (
    IncompatibleCheckpointError,
    TrainingCheckpointer,
    restore_params_from_model_dir,
)
from alexatm_jax.training.model_dir import (
    ArchitectureMismatchError,
    check_architecture,
    write_model_config,
)
from alexatm_jax.training.state import TrainState
from alexatm_jax.training.warm_start import warm_start_params

TINY = tiny_model_config(dropout_rate=0.1)


def small_state(step: int, scale: float = 1.0, width: int = 8) -> TrainState:
    params = {"dense": {"kernel": jnp.full((4, width), scale), "bias": jnp.arange(width) * scale}}
    return TrainState(
        step=jnp.asarray(step, jnp.int32), params=params, opt_state=optax.adam(1e-3).init(params)
    )


def abstract(state: TrainState) -> TrainState:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def test_restores_the_newest_checkpoint_with_its_progress(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=3)
    for step in (1, 2):
        checkpointer.save(step, small_state(step, scale=step), {"data_iterator": {"n": step}})
    checkpointer.close()
    restored = TrainingCheckpointer(str(tmp_path), keep=3).restore_latest(abstract(small_state(0)))
    assert restored.step == 2 and restored.progress == {"data_iterator": {"n": 2}}
    assert int(restored.state.step) == 2
    np.testing.assert_array_equal(restored.state.params["dense"]["kernel"], np.full((4, 8), 2.0))


def test_an_async_save_is_not_affected_by_donating_the_state_afterwards(tmp_path):
    update = jax.jit(
        lambda s: s.replace(
            step=s.step + 1, params=jax.tree.map(lambda p: p * 3.0 + 1.0, s.params)
        ),
        donate_argnums=0,
    )
    state = update(small_state(0, width=4096))
    expected = np.asarray(state.params["dense"]["kernel"]).copy()
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    checkpointer.save(1, state, {})
    for _ in range(3):
        state = update(state)
    checkpointer.close()
    restored = TrainingCheckpointer(str(tmp_path), keep=2).restore_latest(abstract(state))
    np.testing.assert_array_equal(restored.state.params["dense"]["kernel"], expected)


def test_keep_n_keeps_the_newest_finalized_checkpoints(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    for step in range(1, 5):
        checkpointer.save(step, small_state(step), {})
    checkpointer.close()
    assert TrainingCheckpointer(str(tmp_path), keep=2).steps() == [3, 4]


def test_an_unfinished_save_is_ignored(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    checkpointer.save(1, small_state(1), {})
    checkpointer.close()
    # What a job killed mid-save leaves behind: a temporary directory for the next step.
    os.makedirs(os.path.join(tmp_path, "checkpoints", "2.orbax-checkpoint-tmp-123", "state"))
    restored = TrainingCheckpointer(str(tmp_path), keep=2).restore_latest(abstract(small_state(0)))
    assert restored.step == 1


# Orbax's reader thread complains about its closed event loop after the failed read.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, caplog):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=3)
    for step in (1, 2):
        checkpointer.save(step, small_state(step, scale=step), {"step": step})
    checkpointer.close()
    for path in glob.glob(
        os.path.join(tmp_path, "checkpoints", "2", "state", "**", "d", "*"), recursive=True
    ):
        with open(path, "r+b") as f:
            f.write(b"\xff" * 16)
    reopened = TrainingCheckpointer(str(tmp_path), keep=3)
    with caplog.at_level(logging.WARNING, logger="alexatm_jax.training.checkpointing"):
        restored = reopened.restore_latest(abstract(small_state(0)))
    assert restored.step == 1 and restored.progress == {"step": 1}
    assert "could not be restored" in caplog.text and "falling back" in caplog.text
    assert reopened.steps() == [1]
    assert glob.glob(os.path.join(tmp_path, "checkpoints_unreadable", "2-*", "state"))
    reopened.save(2, small_state(2), {})  # the step can be written again
    reopened.close()


def test_a_checkpoint_of_another_state_layout_is_refused_and_kept(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    checkpointer.save(1, small_state(1, width=8), {})
    checkpointer.close()
    with pytest.raises(IncompatibleCheckpointError, match="dense.kernel: checkpoint shape"):
        TrainingCheckpointer(str(tmp_path), keep=2).restore_latest(
            abstract(small_state(0, width=16))
        )
    assert TrainingCheckpointer(str(tmp_path), keep=2).steps() == [1]


def test_architecture_guard(tmp_path):
    write_model_config(str(tmp_path), TINY)
    check_architecture(str(tmp_path), TINY.replace(dropout_rate=0.0, remat_policy="full"))
    with pytest.raises(ArchitectureMismatchError) as error:
        check_architecture(str(tmp_path), TINY.replace(d_model=64))
    message = str(error.value)
    assert "d_model: saved 32 vs configured 64" in message
    assert "new MODEL_DIR" in message and "init_from" in message


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> tuple[str, dict]:
    """A training MODEL_DIR whose step-3 checkpoint holds the tiny model's seed-0 params."""
    model_dir = str(tmp_path_factory.mktemp("trained"))
    params = init_params(TINY, jax.random.key(0))
    write_model_config(model_dir, TINY)
    state = TrainState(
        step=jnp.asarray(3, jnp.int32), params=params, opt_state=optax.adam(1e-3).init(params)
    )
    checkpointer = TrainingCheckpointer(model_dir, keep=1)
    checkpointer.save(3, state, {})
    checkpointer.close()
    return model_dir, params


def test_restore_params_from_model_dir_reads_params_only(trained_dir):
    model_dir, params = trained_dir
    restored, config, step = restore_params_from_model_dir(model_dir)
    assert step == 3 and config == TINY
    jax.tree.map(np.testing.assert_array_equal, restored, params)
    with pytest.raises(ValueError, match="no checkpoint for step 7"):
        restore_params_from_model_dir(model_dir, step=7)


def test_warm_start_copies_only_the_selected_subtrees(trained_dir):
    model_dir, source = trained_dir
    fresh = jax.tree.map(lambda x: x + 1.0, source)
    warm, copied = warm_start_params(fresh, TINY, model_dir, ("encoder", "token_embedder"))
    assert copied and all(p.split("/")[0] in ("encoder", "token_embedder") for p in copied)
    jax.tree.map(np.testing.assert_array_equal, warm["encoder"], source["encoder"])
    jax.tree.map(np.testing.assert_array_equal, warm["decoder"], fresh["decoder"])
    with pytest.raises(ValueError, match="match no parameter"):
        warm_start_params(fresh, TINY, model_dir, ("nonexistent",))


def test_warm_start_refuses_mismatched_shapes(trained_dir):
    model_dir, _ = trained_dir
    wider = TINY.replace(vocab_size=128)
    with pytest.raises(ValueError, match="does not fit the configured model"):
        fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param_shapes(wider))
        warm_start_params(fresh, wider, model_dir)


def _state_with_optimizer(optimizer_config) -> TrainState:
    from alexatm_jax.training.optimizer import make_optimizer

    params = {"final_logits_bias": jnp.arange(5.0), "dense": {"kernel": jnp.ones((2, 3))}}
    tx = make_optimizer(optimizer_config, 10)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    return TrainState(step=jnp.asarray(1, jnp.int32), params=params, opt_state=opt_state)


def test_a_checkpoint_that_trained_the_logits_bias_resumes_without_its_moments(tmp_path, caplog):
    """Written before final_logits_bias became a buffer: the bias value is restored, its Adam
    moments are left unread (with a warning), everything else is bit-identical."""
    from alexatm_jax.training.optimizer import OptimizerConfig, is_buffer_statistic

    old = _state_with_optimizer(OptimizerConfig(buffers=()))
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2, async_save=False)
    checkpointer.save(1, old, {"data_iterator": {"n": 1}})
    checkpointer.close()
    new_layout = abstract(_state_with_optimizer(OptimizerConfig()))
    reopened = TrainingCheckpointer(str(tmp_path), keep=2)
    with pytest.raises(IncompatibleCheckpointError, match="final_logits_bias"):
        reopened.restore_latest(new_layout)
    with caplog.at_level(logging.WARNING):
        restored = reopened.restore_latest(
            new_layout, droppable=lambda name: is_buffer_statistic(name, ("final_logits_bias",))
        )
    assert restored.step == 1 and restored.verified
    assert "final_logits_bias" in caplog.text and "left unread" in caplog.text
    np.testing.assert_array_equal(restored.state.params["final_logits_bias"], np.arange(5.0))
    old_leaves = {
        jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(old)[0]
    }
    for path, value in jax.tree_util.tree_flatten_with_path(restored.state)[0]:
        np.testing.assert_array_equal(value, old_leaves[jax.tree_util.keystr(path)])
    assert len(old_leaves) == len(jax.tree.leaves(restored.state)) + 2  # mu and nu of the bias
