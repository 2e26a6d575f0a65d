"""Fault injection on the training run (in-process, synthetic batches, tiny model): non-finite
steps within and past their limits, an exploding learning rate, every checkpoint unreadable,
refused launches, a full disk and kill -9 during a save. Each asserts that the last good
checkpoint survives and that resuming from it reproduces the uninterrupted run's losses."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest
from fault_harness import TINY, TRAIN_STEPS, run
from fault_injection import (
    flip,
    largest_data_file,
    read_only_directory,
    resize_tmpfs,
    simulate_full_disk_in_json_writes,
    tmpfs,
    used_bytes,
)

from alexatm_jax.training.checkpointing import CheckpointSaveError
from alexatm_jax.training.model_dir import ArchitectureMismatchError
from alexatm_jax.training.optimizer import OptimizerConfig, learning_rate_schedule
from alexatm_jax.training.trainer import (
    InvalidTrainArguments,
    NonFiniteLossError,
    NoReadableCheckpointError,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_harness.py")


def metrics(model_dir: str) -> dict[int, dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def checkpoint_steps(model_dir: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(model_dir, "checkpoints")) if n.isdigit())


def drop_checkpoints_after(model_dir: str, step: int) -> None:
    for other in checkpoint_steps(model_dir):
        if other > step:
            shutil.rmtree(os.path.join(model_dir, "checkpoints", str(other)))


def slow_down_batches(monkeypatch, seconds: float) -> None:
    """Make every global batch take `seconds` longer to arrive."""
    from alexatm_jax.data.global_batches import GlobalBatches

    original = GlobalBatches.__next__

    def delayed(self):
        time.sleep(seconds)
        return original(self)

    monkeypatch.setattr(GlobalBatches, "__next__", delayed)


INJECTED_REL = 1e-6  # see assert_losses_match


def assert_losses_match(model_dir: str, reference: str, steps, rel: float = 0.0) -> None:
    """The losses of `steps` equal the reference run's: exactly, or within `rel` (relative).

    Steps taken by a program compiled with fault injection are a different XLA program from the
    reference's, and XLA:CPU may fuse it differently: its updates can differ in the last float32
    bits, so runs that went through injected steps are compared within 1e-6.
    """
    got, want = metrics(model_dir), metrics(reference)
    assert [got[s]["loss"] for s in steps] == pytest.approx(
        [want[s]["loss"] for s in steps], rel=rel, abs=0.0
    )


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Share compiled train steps between this module's many short runs (each train() call
    builds a new jitted step; the persistent cache turns its recompilation into a lookup)."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    previous = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    cache.reset_cache()
    yield
    for name, value in previous.items():
        jax.config.update(name, value)
    cache.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """MODEL_DIR of an uninterrupted 12-step run that kept all its checkpoints (2, 4, ..., 12)."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    run(model_dir, keep_checkpoints=TRAIN_STEPS)
    assert sorted(metrics(model_dir)) == list(range(1, TRAIN_STEPS + 1))
    return model_dir


def test_an_injected_nan_is_skipped_warned_and_the_last_good_checkpoint_kept(
    reference, tmp_path, caplog
):
    model_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        result = run(model_dir, inject_nonfinite_steps=(5,))
    assert result.skipped_steps == 1 and result.final_step == TRAIN_STEPS
    assert "step 5: non-finite loss (nan)" in caplog.text
    records = metrics(model_dir)
    assert [s for s, r in records.items() if r["skipped"]] == [5]
    assert records[TRAIN_STEPS]["skipped_total"] == 1.0
    # The learning rate logged for the skipped step is the schedule's, not step 4's again.
    schedule = learning_rate_schedule(
        OptimizerConfig(learning_rate=1e-2, end_learning_rate=1e-3), TRAIN_STEPS
    )
    assert records[5]["learning_rate"] == pytest.approx(float(schedule(4)), rel=1e-6)
    assert records[5]["learning_rate"] != records[4]["learning_rate"]
    # keep_checkpoints=1, yet checkpoint 4 (the newest before the NaN) survives.
    assert checkpoint_steps(model_dir) == [4, TRAIN_STEPS]
    progress = json.load(open(os.path.join(model_dir, "checkpoints", "12", "progress", "metadata")))
    assert progress["skipped_steps"] == 1 and progress["first_skipped_step"] == 5
    drop_checkpoints_after(model_dir, 4)
    run(model_dir)
    assert_losses_match(model_dir, reference, range(1, TRAIN_STEPS + 1), rel=INJECTED_REL)


def test_consecutive_and_windowed_limits_stop_the_run(reference, tmp_path):
    model_dir = str(tmp_path / "consecutive")
    with pytest.raises(
        NonFiniteLossError,
        match=r"step 7: 3 consecutive non-finite steps .* "
        r"Last good checkpoint: step 4 ",
    ):
        run(model_dir, inject_nonfinite_steps=(5, 6, 7), max_skipped_steps=2)
    assert checkpoint_steps(model_dir) == [4, 6]  # 6 was saved after 2 skipped steps
    assert max(metrics(model_dir)) == 7
    drop_checkpoints_after(model_dir, 4)
    run(model_dir)
    assert_losses_match(model_dir, reference, range(5, TRAIN_STEPS + 1), rel=INJECTED_REL)

    windowed = str(tmp_path / "windowed")
    with pytest.raises(NonFiniteLossError, match=r"step 7: 3 non-finite steps in the last 5 "):
        run(windowed, inject_nonfinite_steps=(3, 5, 7), max_skipped_fraction=0.4, skipped_window=5)
    assert 2 in checkpoint_steps(windowed)


def test_an_exploding_learning_rate_stops_within_the_limit(tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    exploding = OptimizerConfig(learning_rate=1e30, end_learning_rate=1e30, clip_norm=0.0)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            NonFiniteLossError,
            match=r"6 consecutive non-finite steps \(limit "
            r"train.max_skipped_steps=5\).*Last good checkpoint: step 1",
        ),
    ):
        run(model_dir, optimizer_config=exploding, checkpoint_period=1)
    assert [line for line in caplog.text.splitlines() if "non-finite loss" in line][0].count(
        "step 2:"
    ) == 1
    assert checkpoint_steps(model_dir)[0] == 1 and max(metrics(model_dir)) == 7


def test_all_checkpoints_unreadable_stops_unless_restart_is_asked(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(reference, model_dir)
    for step in checkpoint_steps(model_dir):
        flip(largest_data_file(os.path.join(model_dir, "checkpoints", str(step))), count=16)
    before = open(os.path.join(model_dir, "metrics.jsonl")).read()
    with pytest.raises(NoReadableCheckpointError, match=r"no readable checkpoint \(step 12: "):
        run(model_dir, train_steps=TRAIN_STEPS + 2)
    with pytest.raises(NoReadableCheckpointError, match=r"checkpoints_unreadable/ holds 2-.*, 12-"):
        run(model_dir, train_steps=TRAIN_STEPS + 2)  # a relaunch does not start over either
    assert open(os.path.join(model_dir, "metrics.jsonl")).read() == before
    run(model_dir, on_unreadable="restart")
    rotated = glob.glob(os.path.join(model_dir, "metrics.before-*.jsonl"))
    assert len(rotated) == 1 and open(rotated[0]).read() == before
    assert_losses_match(model_dir, reference, range(1, TRAIN_STEPS + 1))


def test_refused_launches_leave_model_dir_untouched(reference, tmp_path, demo_vocabulary):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    with pytest.raises(InvalidTrainArguments, match="exists and is not a directory"):
        run(str(a_file))
    assert a_file.read_text() == "not a directory"
    with pytest.raises(InvalidTrainArguments, match="exists and is not a directory"):
        run(str(a_file / "run"))
    with read_only_directory(str(tmp_path / "ro")) as read_only:
        if read_only:
            with pytest.raises(InvalidTrainArguments, match="is not writable"):
                run(str(tmp_path / "ro" / "run"))
    with pytest.raises(InvalidTrainArguments, match="data directory .*nowhere does not exist"):
        run(
            str(tmp_path / "new"),
            data_source="seqio",
            data_dir=str(tmp_path / "nowhere"),
            model_config=TINY.replace(vocab_size=4000),
        )
    assert not (tmp_path / "new").exists()
    model_dir = str(tmp_path / "other")
    shutil.copytree(reference, model_dir)
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{model_dir}/**", recursive=True)}
    with pytest.raises(ArchitectureMismatchError, match="d_model: saved 32 vs configured 64"):
        run(model_dir, model_config=TINY.replace(d_model=64))
    assert stamps == {
        p: os.stat(p).st_mtime_ns for p in glob.glob(f"{model_dir}/**", recursive=True)
    }


def resumable_copy(reference: str, model_dir: str, step: int) -> None:
    """`model_dir` as the reference run was after its step-`step` checkpoint (plus later
    metrics, which a resume drops)."""
    shutil.copytree(reference, model_dir)
    drop_checkpoints_after(model_dir, step)


def test_a_failed_background_save_stops_the_run_at_once(reference, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    resumable_copy(reference, model_dir, 4)
    simulate_full_disk_in_json_writes(monkeypatch)  # the write fails in the background
    slow_down_batches(monkeypatch, 0.2)  # steps slower than the failing write
    with pytest.raises(
        CheckpointSaveError,
        match=r"saving checkpoint step 8 .*disk full.*"
        r"intact: \[2, 4\]",
    ):
        run(model_dir, checkpoint_period=4)
    assert max(metrics(model_dir)) < 12  # stopped at once, not at the next checkpoint
    assert checkpoint_steps(model_dir) == [2, 4]
    monkeypatch.undo()
    run(model_dir)
    assert_losses_match(model_dir, reference, range(1, TRAIN_STEPS + 1))


def test_a_full_disk_keeps_the_last_checkpoint(reference, tmp_path):
    disk = str(tmp_path / "disk")
    model_dir = os.path.join(disk, "run")
    with tmpfs(disk, 64 << 20) as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs needs root (the simulated ENOSPC test runs)")
        resumable_copy(reference, model_dir, 4)
        assert resize_tmpfs(disk, used_bytes(disk) + (96 << 10))  # no room for a checkpoint
        with pytest.raises((CheckpointSaveError, OSError), match="No space left on device"):
            run(model_dir, checkpoint_period=4)  # the save or a metrics write fails first
        assert checkpoint_steps(model_dir) == [2, 4]
        assert resize_tmpfs(disk, 64 << 20)
        run(model_dir)
        assert_losses_match(model_dir, reference, range(1, TRAIN_STEPS + 1))


def test_kill_9_during_a_save_resumes_from_the_previous_checkpoint(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(HARNESS)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
        ),
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,  # this module's cache
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    process = subprocess.Popen(
        [sys.executable, HARNESS, model_dir, json.dumps({"checkpoint_period": 4}), "5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not glob.glob(os.path.join(model_dir, "checkpoints", "8.orbax-checkpoint-tmp*")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "the step-8 save never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # checkpoint 4 is complete, 8 is being written
    process.wait(timeout=60)
    assert checkpoint_steps(model_dir) == [4]
    run(model_dir, checkpoint_period=4)
    assert_losses_match(model_dir, reference, range(5, TRAIN_STEPS + 1))
