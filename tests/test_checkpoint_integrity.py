"""Verified checkpoints: content digests, detection of flipped bits and bytes on restore and on
`alexatm_jax.load`, unverified old checkpoints, protected checkpoints, failed background saves,
`alexatm-info --verify` (in-process, tiny trees; fault injection from tests/fault_injection.py)."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from fault_injection import flip, largest_data_file, simulate_full_disk_in_json_writes
from tiny_config import tiny_model_config

import alexatm_jax
from alexatm_jax.checkpoints import digests, save_model_checkpoint
from alexatm_jax.checkpoints.digests import DigestMismatchError
from alexatm_jax.cli import info
from alexatm_jax.model.params import init_params
from alexatm_jax.training.checkpointing import (
    CheckpointSaveError,
    TrainingCheckpointer,
    restore_params_from_model_dir,
)
from alexatm_jax.training.model_dir import write_model_config
from alexatm_jax.training.state import TrainState

# Orbax's reader thread complains about its closed event loop after a failed read.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
TINY = tiny_model_config(dropout_rate=0.1)


def reference_digest(x: np.ndarray) -> str:
    """The digest formula of alexatm_jax.checkpoints.digests, written out plainly in numpy."""
    x = np.ascontiguousarray(x)
    words = (x.astype(np.uint8) if x.dtype == np.bool_ else x).reshape(-1)
    words = words.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[words.dtype.itemsize])
    words = words.astype(np.uint64)
    index = np.arange(words.size, dtype=np.uint64)
    mask = np.uint64(0xFFFFFFFF)

    def fmix(h):
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(0x85EBCA6B)) & mask
        h ^= h >> np.uint64(13)
        h = (h * np.uint64(0xC2B2AE35)) & mask
        return h ^ (h >> np.uint64(16))

    lanes = []
    for seed in (0x243F6A88, 0x85A308D3):
        key = fmix((index * np.uint64(0x9E3779B1) + np.uint64(seed)) & mask)
        lanes.append(int(np.sum(fmix(words ^ key)) & mask))
    return f"{lanes[0]:08x}{lanes[1]:08x}"


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32, np.int8, np.bool_])
def test_digests_follow_the_formula_on_device_and_host_and_see_every_bit(dtype):
    values = (np.random.default_rng(0).normal(size=(5, 7)) * 50).astype(dtype)
    expected = reference_digest(values)
    assert digests.tree_digests({"x": jnp.asarray(values)})["x"]["digest"] == expected
    assert digests.tree_digests({"x": values})["x"]["digest"] == expected
    bits = np.dtype(dtype).itemsize * 8 if dtype != np.bool_ else 1
    raw = values.reshape(-1).view(
        {1: np.uint8, 2: np.uint16, 4: np.uint32}[np.dtype(dtype).itemsize]
    )
    seen = {expected}
    for element in (0, 17, raw.size - 1):
        for bit in range(bits):
            changed = raw.copy()
            changed[element] ^= np.array(1 << bit).astype(raw.dtype)
            seen.add(digests.tree_digests({"x": changed.view(values.dtype)})["x"]["digest"])
    assert len(seen) == 1 + 3 * bits  # every single-bit change gives a new digest


def test_the_digest_of_a_sharded_array_is_its_digest_on_one_device():
    code = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from alexatm_jax.checkpoints import digests
mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
x = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32)
found = {digests.tree_digests({"x": jax.device_put(x, NamedSharding(mesh, spec))})["x"]["digest"]
         for spec in (P(), P("a"), P("a", "b"), P(None, "b"))}
found.add(digests.tree_digests({"x": x})["x"]["digest"])
assert len(found) == 1, found
"""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def state_at(step: int, scale: float) -> TrainState:
    """A small TrainState of random (incompressible) values, different for each step/scale."""
    kernel, bias = np.random.default_rng(step).normal(scale, 1.0, size=(2, 16, 64))
    params = {
        "dense": {
            "kernel": jnp.asarray(kernel, jnp.float32),
            "bias": jnp.asarray(bias[0], jnp.float32),
        }
    }
    return TrainState(
        step=jnp.asarray(step, jnp.int32), params=params, opt_state=optax.adam(1e-3).init(params)
    )


def abstract(state: TrainState) -> TrainState:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def same(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory) -> str:
    """A MODEL_DIR with checkpoints 1, 2, 3 of different states."""
    model_dir = str(tmp_path_factory.mktemp("three"))
    checkpointer = TrainingCheckpointer(model_dir, keep=3)
    for step in (1, 2, 3):
        checkpointer.save(step, state_at(step, float(step)), {"data_iterator": {"n": step}})
    checkpointer.close()
    return model_dir


def restore(model_dir: str):
    checkpointer = TrainingCheckpointer(model_dir, keep=3)
    restored = checkpointer.restore_latest(abstract(state_at(0, 0.0)))
    checkpointer.close()
    return restored


def test_every_bit_flip_in_the_newest_checkpoint_is_caught_or_harmless(
    three_checkpoints, tmp_path, caplog
):
    newest = os.path.join(three_checkpoints, "checkpoints", "3")
    files = sorted(
        os.path.relpath(p, newest)
        for p in glob.glob(f"{newest}/**", recursive=True)
        if os.path.isfile(p) and os.path.getsize(p) > 0
    )
    assert len(files) >= 8, files
    outcomes = {}
    for number, name in enumerate(files):
        model_dir = str(tmp_path / f"run{number}")
        shutil.copytree(three_checkpoints, model_dir)
        flip(os.path.join(model_dir, "checkpoints", "3", name), mask=0x10)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="alexatm_jax.training.checkpointing"):
            restored = restore(model_dir)
        if restored.step == 3:  # the flipped bit did not matter (e.g. a timestamp digit)
            assert same(restored.state, state_at(3, 3.0)), name
            assert restored.progress == {"data_iterator": {"n": 3}}, name
            outcomes[name] = "harmless"
        else:  # detected: moved aside, the previous checkpoint is used intact
            assert restored.step == 2 and same(restored.state, state_at(2, 2.0)), name
            assert "falling back to the previous checkpoint (step 2)" in caplog.text, name
            assert glob.glob(os.path.join(model_dir, "checkpoints_unreadable", "3-*")), name
            outcomes[name] = "detected"
    largest = os.path.relpath(largest_data_file(newest), newest)
    assert outcomes[largest] == "detected", outcomes
    for item in ("progress", "digests"):
        assert outcomes[os.path.join(item, "metadata")] == "detected", outcomes


def test_flipped_bytes_in_the_newest_and_an_older_checkpoint(three_checkpoints, tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(three_checkpoints, model_dir)
    for step in (3, 2):
        flip(
            largest_data_file(os.path.join(model_dir, "checkpoints", str(step))),
            mask=0xFF,
            count=16,
        )
    with caplog.at_level(logging.WARNING, logger="alexatm_jax.training.checkpointing"):
        restored = restore(model_dir)
    assert restored.step == 1 and same(restored.state, state_at(1, 1.0))
    assert restored.verified
    assert caplog.text.count("could not be restored") == 2
    assert "digests" in caplog.text or "DATA_LOSS" in caplog.text


def test_a_digest_mismatch_names_the_array(three_checkpoints, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(three_checkpoints, model_dir)
    record = os.path.join(model_dir, "checkpoints", "3", "digests", "metadata")
    manifest = json.loads(open(record).read())
    manifest["arrays"]["params.dense.bias"]["digest"] = "0" * 16  # as if the data had changed
    open(record, "w").write(json.dumps(manifest))
    checkpointer = TrainingCheckpointer(model_dir, keep=3)
    assert checkpointer.restore_latest(abstract(state_at(0, 0.0))).step == 2
    assert "params.dense.bias: digest differs" in checkpointer.quarantined[0]
    checkpointer.close()


def test_checkpoints_written_before_digests_restore_unverified(three_checkpoints, tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(three_checkpoints, model_dir)
    shutil.rmtree(os.path.join(model_dir, "checkpoints", "3", "digests"))
    with caplog.at_level(logging.WARNING, logger="alexatm_jax.training.checkpointing"):
        restored = restore(model_dir)
    assert restored.step == 3 and not restored.verified and same(restored.state, state_at(3, 3.0))
    assert "restored unverified" in caplog.text


def test_the_protected_checkpoint_outlives_keep_n(tmp_path):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=1)
    checkpointer.save(1, state_at(1, 1.0), {})
    checkpointer.protect(1)
    for step in (2, 3, 4):
        checkpointer.save(step, state_at(step, 1.0), {})
    checkpointer.close()
    assert TrainingCheckpointer(str(tmp_path), keep=1).steps() == [1, 4]


def test_a_failed_background_save_is_reported_by_the_next_poll(tmp_path, monkeypatch):
    checkpointer = TrainingCheckpointer(str(tmp_path), keep=2)
    checkpointer.save(1, state_at(1, 1.0), {"n": 1})
    checkpointer.wait_until_finished()
    simulate_full_disk_in_json_writes(monkeypatch)
    checkpointer.save(2, state_at(2, 2.0), {"n": 2})
    with pytest.raises(CheckpointSaveError, match="saving checkpoint step 2 .* No space left"):
        for _ in range(1000):  # the write fails in the background within milliseconds
            checkpointer.poll()
            jax.block_until_ready(jnp.zeros(()))
    checkpointer.close()
    monkeypatch.undo()
    restored = restore(str(tmp_path))
    assert restored.step == 1 and restored.progress == {"n": 1}


@pytest.fixture(scope="module")
def params_only_dirs(tmp_path_factory):
    """A training MODEL_DIR and a model checkpoint holding only the tiny model's parameters (so
    a flip in the middle of a data file hits a parameter)."""
    root = tmp_path_factory.mktemp("params_only")
    params = init_params(TINY, jax.random.key(0))
    model_dir = str(root / "run")
    write_model_config(model_dir, TINY)
    checkpointer = TrainingCheckpointer(model_dir, keep=1)
    checkpointer.save(
        3, TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state=()), {}
    )
    checkpointer.close()
    model_checkpoint = save_model_checkpoint(root / "model", TINY, jax.tree.map(np.asarray, params))
    return model_dir, str(model_checkpoint), params


@pytest.mark.parametrize("mask", [0x01, 0x80], ids=["low-bit", "high-bit"])
def test_load_and_warm_start_sources_detect_a_single_flipped_bit(params_only_dirs, tmp_path, mask):
    model_dir, model_checkpoint, params = params_only_dirs
    run = shutil.copytree(model_dir, tmp_path / "run")
    flip(largest_data_file(str(run / "checkpoints" / "3")), mask=mask)
    for path in (run, run / "checkpoints" / "3"):
        with pytest.raises(DigestMismatchError, match=r"params\.[a-z_.0-9]+: digest differs"):
            alexatm_jax.load(path)
    with pytest.raises(DigestMismatchError):
        restore_params_from_model_dir(str(run))
    converted = shutil.copytree(model_checkpoint, tmp_path / "model")
    data = max(
        glob.glob(str(converted / "params" / "**" / "d" / "*"), recursive=True), key=os.path.getsize
    )
    flip(data, mask=mask)
    with pytest.raises(DigestMismatchError, match=r"[a-z_.0-9]+: digest differs"):
        alexatm_jax.load(converted)
    loaded = alexatm_jax.load(model_dir)  # the intact originals load, verified
    assert same(loaded.params, params)


def test_model_checkpoints_without_digests_load_unverified(params_only_dirs, tmp_path, caplog):
    _, model_checkpoint, params = params_only_dirs
    old = shutil.copytree(model_checkpoint, tmp_path / "old")
    os.remove(old / "digests.json")
    with caplog.at_level(logging.WARNING):
        loaded = alexatm_jax.load(old, param_dtype="bfloat16")
    assert "loaded unverified" in caplog.text
    assert loaded.params["lm_head"].dtype == jnp.bfloat16


def test_info_verify_reports_each_checkpoint(three_checkpoints, params_only_dirs, tmp_path, capsys):
    assert info.main(["--verify", three_checkpoints]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(": verified: " in line for line in lines)
    model_dir = str(tmp_path / "run")
    shutil.copytree(three_checkpoints, model_dir)
    flip(largest_data_file(os.path.join(model_dir, "checkpoints", "2")))
    shutil.rmtree(os.path.join(model_dir, "checkpoints", "1", "digests"))
    assert info.main(["--verify", model_dir]) == 1
    out = capsys.readouterr().out
    assert "checkpoints/1: unverified" in out and "checkpoints/3: verified" in out
    assert "checkpoints/2: CORRUPT" in out
    assert info.main(["--verify", params_only_dirs[1]]) == 0
    assert "parameter arrays match their digests" in capsys.readouterr().out
    assert info.main(["--verify", str(tmp_path)]) == 2
    assert "is not a model checkpoint" in capsys.readouterr().err
