"""End-to-end tests of `alexatm-train` (real CLI subprocesses, tiny model, SeqIO sample data).

One uninterrupted 10-step run is the reference; the other runs are compared with it through
their metrics.jsonl files. To keep start-up short, the model has one layer per stack (smoke_cpu.gin
already cuts the sample mixture to two languages) and the processes share a JAX persistent
compilation cache.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(REPO, "tests", "trainer_harness.py")
TRAIN_STEPS = 10
CHECKPOINT_PERIOD = 5
COMMON_ARGS = [
    "--gin_file=gin/experiments/smoke_cpu.gin",
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    f"--gin.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}",
    "--gin.EVAL_PERIOD=0",
    "--gin.train.progress_bar=False",
    "--gin.train.sequence_length={'inputs': 64, 'targets': 64}",
    "--gin.ModelConfig.num_encoder_layers=1",
    "--gin.ModelConfig.num_decoder_layers=1",
]
TIMEOUT_S = 300
COMPILATION_CACHE = {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
        **COMPILATION_CACHE,
    )
    env.pop("XLA_FLAGS", None)
    env.pop("ALEXATM_NUM_CPU_DEVICES", None)
    return env


def _command(model_dir: str, extra: list[str], step_delay_s: float | None) -> list[str]:
    prefix = (
        [sys.executable, HARNESS, str(step_delay_s)]
        if step_delay_s is not None
        else [sys.executable, "-m", "alexatm_jax.cli.train"]
    )
    return prefix + COMMON_ARGS + ["--model_dir", model_dir] + extra


def run_train(model_dir: str, *extra: str) -> subprocess.CompletedProcess:
    """Run the CLI to completion; returns the finished process (stdout/stderr captured)."""
    return subprocess.run(
        _command(model_dir, list(extra), None),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def start_train(
    model_dir: str, log_path: str, *extra: str, step_delay_s: float = 0.5
) -> subprocess.Popen:
    """Start the CLI with slowed-down steps in the background (output into `log_path`)."""
    log = open(log_path, "w")
    return subprocess.Popen(
        _command(model_dir, list(extra), step_delay_s),
        cwd=REPO,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, what: str, process: subprocess.Popen, timeout_s: float = TIMEOUT_S):
    """Poll `condition()` until it is truthy; fails if the process exits first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"training exited with {process.returncode} before {what}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"timed out waiting for {what}")


def metrics(model_dir: str) -> dict[int, dict]:
    """metrics.jsonl as {step: record}; asserts there is one line per step."""
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r for r in records}


def checkpoint_steps(model_dir: str) -> list[int]:
    """Finalized checkpoint steps (directories named by an integer)."""
    root = os.path.join(model_dir, "checkpoints")
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def losses(model_dir: str) -> dict[int, float]:
    return {step: record["loss"] for step, record in metrics(model_dir).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_vocabulary, jax_cache_dir) -> str:
    """MODEL_DIR of an uninterrupted 10-step run on one device, evaluated at steps 5 and 10
    (every test here starts from it; the runs use the demo vocabulary)."""
    COMPILATION_CACHE.update(
        JAX_COMPILATION_CACHE_DIR=jax_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    model_dir = str(tmp_path_factory.mktemp("reference"))
    done = run_train(model_dir, "--gin.EVAL_PERIOD=5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "alexatm-train: finished at step 10" in done.stdout
    return model_dir


def test_metrics_has_a_line_per_step_and_files_are_written(reference):
    records = metrics(reference)
    assert sorted(records) == list(range(1, TRAIN_STEPS + 1))
    for record in records.values():
        for key in ("loss", "accuracy", "grad_norm", "learning_rate", "tokens_per_s", "skipped"):
            assert key in record, f"{key} missing in {record}"
        assert np.isfinite(record["loss"]) and record["skipped"] == 0.0
    assert [s for s, r in records.items() if "eval_loss" in r] == [5, 10]
    assert all(np.isfinite(records[s]["eval_loss"]) for s in (5, 10))
    assert checkpoint_steps(reference) == [5, 10]
    for name in ("config.gin", "model_config.json", "sharding_table.txt"):
        assert os.path.getsize(os.path.join(reference, name)) > 0, name
    operative = open(os.path.join(reference, "config.gin")).read()
    assert "TRAIN_STEPS = 10" in operative and "train.train_steps = %TRAIN_STEPS" in operative
    assert glob.glob(os.path.join(reference, "tensorboard", "events.out.tfevents.*"))


def test_kill_9_then_sigterm_then_finish_reproduces_the_uninterrupted_losses(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    # 1. kill -9 once the step-5 checkpoint is complete (steps are slowed to 0.5 s each).
    killed = start_train(model_dir, str(tmp_path / "killed.log"))
    wait_for(
        lambda: os.path.isdir(os.path.join(model_dir, "checkpoints", "5")),
        "the step-5 checkpoint",
        killed,
    )
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert checkpoint_steps(model_dir) == [5]

    # 2. restart: resumes at 5; SIGTERM after step 7 -> finishes the step, saves, exits 0.
    stopped = start_train(model_dir, str(tmp_path / "stopped.log"))
    wait_for(
        lambda: (
            max(metrics(model_dir), default=0) >= 7
            and "Resuming from checkpoint step 5" in open(tmp_path / "stopped.log").read()
        ),
        "step 7 of the resumed run",
        stopped,
    )
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 0, open(tmp_path / "stopped.log").read()[-3000:]
    log = open(tmp_path / "stopped.log").read()
    assert "Stopped by SIGTERM" in log
    stop_step = checkpoint_steps(model_dir)[-1]
    assert 7 <= stop_step < TRAIN_STEPS and max(metrics(model_dir)) == stop_step

    # 3. finish: resumes at the SIGTERM checkpoint and runs to step 10.
    done = run_train(model_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from checkpoint step {stop_step}" in done.stdout
    assert losses(model_dir) == losses(reference)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(reference, model_dir)
    for path in glob.glob(
        os.path.join(model_dir, "checkpoints", "10", "state", "**", "d", "*"), recursive=True
    ):
        with open(path, "r+b") as f:
            size = os.path.getsize(path)
            f.write(b"\x00" * size)
    done = run_train(model_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "could not be restored" in done.stderr and "falling back" in done.stderr
    assert "Resuming from checkpoint step 5" in done.stdout
    assert glob.glob(os.path.join(model_dir, "checkpoints_unreadable", "10-*"))
    assert checkpoint_steps(model_dir) == [5, 10]
    assert losses(model_dir) == losses(reference)


def test_a_model_dir_of_another_architecture_is_refused(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(reference, model_dir)
    done = run_train(model_dir, "--gin.ModelConfig.d_model=32")
    assert done.returncode == 2
    assert "different architecture" in done.stderr and "d_model: saved 64" in done.stderr
    assert "new MODEL_DIR" in done.stderr and "init_from" in done.stderr
    assert checkpoint_steps(model_dir) == [5, 10]


# Marked slow (about 2 minutes): test_train_step.py's sharded-training check covers the same
# data x fsdp x tensor mesh against one device in the library; this adds the CLI's flags.
@pytest.mark.slow
def test_eight_devices_data_fsdp_tensor_match_one_device(reference, tmp_path):
    model_dir = str(tmp_path / "run")
    done = run_train(
        model_dir, "--gin_file=gin/meshes/cpu_8_dp_fsdp_tp.gin", "--num_cpu_devices", "8"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data=2, fsdp=2, tensor=2" in done.stdout
    one, eight = losses(reference), losses(model_dir)
    assert sorted(eight) == sorted(one)
    np.testing.assert_allclose(
        [eight[s] for s in sorted(one)], [one[s] for s in sorted(one)], rtol=0, atol=1e-5
    )


def test_init_from_copies_parameters_only(reference, tmp_path):
    from alexatm_jax.training.checkpointing import restore_params_from_model_dir

    model_dir = str(tmp_path / "run")
    done = run_train(
        model_dir,
        f"--gin.train.init_from='{reference}'",
        "--gin.train.seed=1",
        "--gin.TRAIN_STEPS=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initialised 53 parameter arrays from" in done.stdout
    assert sorted(metrics(model_dir)) == [1] and checkpoint_steps(model_dir) == [1]
    with open(os.path.join(model_dir, "checkpoints", "1", "progress", "metadata")) as f:
        progress = json.load(f)
    assert progress["data_iterator"]["examples_consumed"] == 4  # the data stream restarted
    source, _, _ = restore_params_from_model_dir(reference)
    warm, _, step = restore_params_from_model_dir(model_dir)
    assert step == 1
    # One Adam step of lr 1e-3 moves a parameter by at most ~1e-3 from the copied value; a
    # fresh initialisation with seed 1 would differ by ~N(0, 0.02) everywhere.
    import jax

    gaps = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), source, warm
    )
    assert max(jax.tree.leaves(gaps)) < 1.2e-3
