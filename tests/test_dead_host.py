"""A lost process stops a multi-process job, and the relaunch resumes exactly (real processes).

Two `alexatm-train` processes (2 CPU devices each, data=2 x fsdp=2, the tiny model on synthetic
batches, a checkpoint every 4 steps, far more steps than they will run) are started on
127.0.0.1 with the default timeouts (`alexatm_jax.multiprocess`):

1. Once step 7 is logged, process 1 is killed with SIGKILL while the job runs its next step.
   Process 0 must exit 1 within 60 s with one line of ours naming process 1.
2. Only finalized checkpoints carry a step name, and the relaunch restores the newest of them
   (digest-verified) and reproduces the first launch's losses exactly at every step they share.
   Then process 0, the coordinator, is killed: process 1 must exit non-zero within 60 s (JAX's
   runtime aborts it as soon as its connection to the coordinator closes).
3. A process whose partner never starts fails with exit 1 and one line naming the coordinator
   within its --initialization_timeout_s (plus start-up), and writes nothing.
4. A process that fails (here: a misspelt macro on process 1 only) makes the other exit 1 naming
   it; an error on every process keeps its exit code 2 on every process.

The launches of 3 and 4 start together the moment process 1 is killed in 1: process 0 then idles
for the 30 s heartbeat timeout, and they use that time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
from multihost_launch import Job, cached_train_env

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
CHECKPOINT_PERIOD = 4
KILL_AFTER_STEP = 7
EXIT_BOUND_S = 60  # the documented bound: heartbeat timeout 30 s + margin
START_TIMEOUT_S = 300
JOIN_TIMEOUT_S = 10
QUICK_FAILURES = ("alone_0", "alone_1", "one_fails", "all_fail")
ARGS = [
    "--gin_file=gin/experiments/smoke_cpu.gin",
    "--gin.BATCH_SIZE=4",
    f"--gin.MESH_DATA={NUM_PROCESSES}",
    f"--gin.MESH_FSDP={DEVICES_PER_PROCESS}",
    "--gin.PARTITION_RULES='fsdp'",
    "--gin.TRAIN_STEPS=10000",
    f"--gin.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}",
    "--gin.EVAL_PERIOD=0",
    "--gin.train.progress_bar=False",
    "--gin.train.data_source='synthetic'",
    "--gin.ModelConfig.num_encoder_layers=1",
    "--gin.ModelConfig.num_decoder_layers=1",
]


def _losses(model_dir: str) -> dict[int, float]:
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    return {r["step"]: r["loss"] for r in records}


def _finalized_steps(model_dir: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(model_dir, "checkpoints")) if n.isdigit())


def _run_until_step(job: Job, model_dir: str, step: int) -> dict[int, float]:
    """Wait until `model_dir`'s metrics reach `step`; fails the test (killing the job) when a
    process exits first or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while max(_losses(model_dir), default=0) < step:
        exited = [p.returncode for p in job.processes if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"the job did not reach step {step} (exit codes {exited})\n{job.tails()}")
        time.sleep(0.1)
    return _losses(model_dir)


def _kill_and_time(job: Job, victim: int, survivor: int) -> tuple[int | None, float]:
    """SIGKILL `victim`; returns the survivor's exit code (None: still running after
    EXIT_BOUND_S) and the seconds it took to exit."""
    job.processes[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = job.wait(survivor, EXIT_BOUND_S)
    elapsed = time.monotonic() - killed
    job.kill()
    return code, elapsed


@pytest.fixture(scope="module")
def env(jax_cache_dir) -> dict[str, str]:
    """The launches' environment, with the session's JAX compilation cache (conftest.py)."""
    return cached_train_env(jax_cache_dir)


def _start_quick_failures(work: str, env: dict[str, str]) -> dict[str, Job]:
    """Start the launches that must fail quickly (tests 3 and 4), all together: process 0 alone
    and process 1 alone (their partner never starts), process 1 failing beside a healthy process
    0, and both processes failing."""
    jobs = {name: Job(work, name, NUM_PROCESSES) for name in QUICK_FAILURES}
    for alone in range(NUM_PROCESSES):
        model_dir = os.path.join(work, f"alone_{alone}_model")
        timeout = ["--initialization_timeout_s", str(JOIN_TIMEOUT_S)]
        jobs[f"alone_{alone}"].start(
            [alone], [*ARGS, "--model_dir", model_dir, *timeout], DEVICES_PER_PROCESS, env
        )
    args = [*ARGS, "--model_dir", os.path.join(work, "one_fails_model")]
    port = jobs["one_fails"].start([0], args, DEVICES_PER_PROCESS, env)
    misspelt = [*args, "--gin.TRAIN_STEPSS=3"]
    jobs["one_fails"].start([1], misspelt, DEVICES_PER_PROCESS, env, port=port)
    args = [*ARGS, "--model_dir", os.path.join(work, "all_fail_model"), "--gin.TRAIN_STEPSS=3"]
    jobs["all_fail"].start(range(NUM_PROCESSES), args, DEVICES_PER_PROCESS, env)
    return jobs


def _exit_moments(jobs: dict[str, Job], timeout_s: float) -> dict[str, list[float | None]]:
    """Poll every started process of `jobs` until all have exited or `timeout_s` passes, then
    kill the rest; returns when each exited (time.monotonic(); None: killed, or never started)."""
    deadline = time.monotonic() + timeout_s
    moments = {name: [None] * len(job.processes) for name, job in jobs.items()}
    while time.monotonic() < deadline:
        running = 0
        for name, job in jobs.items():
            for i, process in enumerate(job.processes):
                if process and moments[name][i] is None:
                    if process.poll() is None:
                        running += 1
                    else:
                        moments[name][i] = time.monotonic()
        if not running:
            break
        time.sleep(0.05)
    for job in jobs.values():
        job.kill()
    return moments


def _codes(job: Job, moments: list[float | None]) -> list[int | None]:
    """Each process's exit code; None where it was killed at the deadline or never started."""
    return [p.returncode if m else None for p, m in zip(job.processes, moments)]


@pytest.fixture(scope="module")
def killed_worker(tmp_path_factory, env) -> dict:
    """The first launch, with process 1 killed after step KILL_AFTER_STEP. While process 0
    waits out the heartbeat timeout, with the CPU idle, the quick-failure launches run
    (`_start_quick_failures`; under "quick": {name: (job, exit moments, start moment)})."""
    work = str(tmp_path_factory.mktemp("dead_host"))
    model_dir = os.path.join(work, "model")
    job = Job(work, "first", NUM_PROCESSES)
    job.start(range(NUM_PROCESSES), [*ARGS, "--model_dir", model_dir], DEVICES_PER_PROCESS, env)
    _run_until_step(job, model_dir, KILL_AFTER_STEP)
    job.processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    quick = _start_quick_failures(work, env)
    started = time.monotonic()
    moments = _exit_moments({"first": job, **quick}, START_TIMEOUT_S)
    code = _codes(job, moments["first"])[0]
    elapsed = (moments["first"][0] or math.inf) - killed
    print(f"process 0 exited {code} {elapsed:.1f} s after process 1 was killed")
    return {
        "work": work,
        "model_dir": model_dir,
        "code": code,
        "elapsed": elapsed,
        "logs": job.logs(),
        "losses": _losses(model_dir),
        "checkpoints": _finalized_steps(model_dir),
        "quick": {name: (quick[name], moments[name], started) for name in quick},
    }


@pytest.fixture(scope="module")
def relaunched(killed_worker, env) -> dict:
    """The same command again, run past the first launch's last step; then process 0 is
    killed."""
    model_dir, first = killed_worker["model_dir"], killed_worker["losses"]
    job = Job(killed_worker["work"], "relaunch", NUM_PROCESSES)
    job.start(range(NUM_PROCESSES), [*ARGS, "--model_dir", model_dir], DEVICES_PER_PROCESS, env)
    losses = _run_until_step(job, model_dir, max(first) + 1)
    code, elapsed = _kill_and_time(job, victim=0, survivor=1)
    print(f"process 1 exited {code} {elapsed:.1f} s after process 0 was killed")
    return {"code": code, "elapsed": elapsed, "logs": job.logs(), "losses": losses}


def test_the_survivor_exits_with_one_line_naming_the_lost_process(killed_worker):
    log = killed_worker["logs"][0]
    assert killed_worker["code"] == 1, f"exit code {killed_worker['code']}\n{log[-3000:]}"
    assert killed_worker["elapsed"] <= EXIT_BOUND_S
    assert (
        "alexatm-train: error: process 0: process 1 sent no heartbeat for 30 s: it died, was "
        "killed or is unreachable; stopping this process" in log
    ), log[-3000:]
    assert "Check failure stack trace" not in log  # JAX's abort did not come first


def test_the_relaunch_resumes_the_last_complete_checkpoint_exactly(killed_worker, relaunched):
    first, again = killed_worker["losses"], relaunched["losses"]
    assert killed_worker["checkpoints"], "no checkpoint was finalized before the kill"
    newest = killed_worker["checkpoints"][-1]
    log = relaunched["logs"][0]
    assert f"Resuming from checkpoint step {newest} " in log, log[-3000:]
    assert "could not be restored" not in log and "unverified" not in log
    shared = [s for s in range(newest + 1, max(first) + 1)]
    assert shared, f"the first launch logged no step after checkpoint {newest}: {sorted(first)}"
    assert [again[s] for s in shared] == [first[s] for s in shared]


def test_losing_the_coordinator_stops_the_others(relaunched):
    log = relaunched["logs"][1]
    assert relaunched["code"] not in (None, 0), f"exit code {relaunched['code']}\n{log[-3000:]}"
    assert relaunched["elapsed"] <= EXIT_BOUND_S
    assert "leader task was preempted/died" in log, log[-3000:]


def test_a_process_that_never_joins_fails_within_the_configured_time(killed_worker):
    """Process 0 alone, and process 1 alone (their coordinator never starts), side by side."""
    for alone in range(NUM_PROCESSES):
        job, moments, started = killed_worker["quick"][f"alone_{alone}"]
        code = _codes(job, moments)[alone]
        elapsed = (moments[alone] or math.inf) - started
        log = job.logs()[alone]
        print(f"process {alone} alone: exit {code} after {elapsed:.1f} s")
        assert code == 1, f"exit code {code}\n{log[-3000:]}"
        assert (
            f"alexatm-train: error: process {alone}: the job did not assemble within "
            f"{JOIN_TIMEOUT_S} s: not all 2 processes joined the coordinator (process 0) at "
            "127.0.0.1:" in log
        ), log[-3000:]
        assert elapsed < JOIN_TIMEOUT_S + 60  # + Python, JAX and TensorFlow start-up
        assert not os.path.exists(os.path.join(killed_worker["work"], f"alone_{alone}_model"))


def test_a_process_that_fails_stops_the_others(killed_worker):
    """Process 1 alone gets a misspelt macro: it exits 2 at once, and process 0, which would
    wait for it in every collective, exits 1 naming it."""
    job, moments, _ = killed_worker["quick"]["one_fails"]
    survivor, failed = _codes(job, moments)
    elapsed = (moments[0] or math.inf) - (moments[1] or 0)
    logs = job.logs()
    print(f"process 0 exited {survivor} {elapsed:.1f} s after process 1 failed")
    assert failed == 2 and "TRAIN_STEPSS" in logs[1], logs[1][-3000:]
    assert survivor == 1, f"exit code {survivor}\n{logs[0][-3000:]}"
    assert elapsed <= EXIT_BOUND_S
    assert (
        "alexatm-train: error: process 0: process 1 failed (exit 2; its log names the error)"
        in logs[0]
    ), logs[0][-3000:]


def test_an_error_on_every_process_keeps_its_exit_code(killed_worker):
    """The same misspelt macro on both processes: both exit 2 with the gin error, neither is
    aborted by JAX when process 0 (and with it the coordination service) goes first."""
    job, moments, _ = killed_worker["quick"]["all_fail"]
    codes = _codes(job, moments)
    assert codes == [2, 2], f"exit codes {codes}\n{job.tails()}"
    assert all("alexatm-train: error: gin configuration:" in log for log in job.logs())
