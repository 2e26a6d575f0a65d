"""A checkpoint of a 2-process run restores onto other numbers of processes, meshes and rules.

The writer: two `alexatm-train` processes x 4 CPU devices, mesh data=2 x fsdp=4, rules `fsdp`,
the tiny model (1 + 1 layers) on synthetic batches, train to step 6 with checkpoints at steps 4
and 6. Its losses at steps 5 and 6 are the uninterrupted run's.

Each target gets a copy of the writer's MODEL_DIR without checkpoint 6, so it resumes from
checkpoint 4, and trains to step 6:

| target | processes x devices | mesh | rules |
| --- | --- | --- | --- |
| one process | 1 x 4 | fsdp=4 | fsdp |
| four processes | 4 x 2 | data=4 x fsdp=2 | fsdp |
| other rules | 1 x 4 | fsdp=2 x tensor=2 | fsdp_tensor |

Every run reads the same global batches (`tests/multihost_harness.py` with READ_SHARDS=global:
each process keeps its rows of one stream of whole global batches), so the targets continue on
the writer's data. Checked per target: it resumed from step 4; the digests of the restored
parameters and optimizer state, computed on the target's own mesh, equal those the writer
recorded in checkpoint 4 for every array (bit-identical); its losses at steps 5 and 6 are within
1e-5 of the writer's (measured: at most 9.5e-7 apart). The four-process target is marked slow
(make test-all): four processes compiling on 2 shared cores take about 3 minutes.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from multihost_launch import REPO, Job, cached_train_env

from alexatm_jax.training.checkpointing import read_digests

HARNESS = os.path.join(REPO, "tests", "multihost_harness.py")
RESTORED_STEP = 4
TOTAL_STEPS = 6
LAUNCH_TIMEOUT_S = 400
COMMON_ARGS = [
    "--gin_file=gin/experiments/smoke_cpu.gin",
    "--gin.BATCH_SIZE=8",
    f"--gin.TRAIN_STEPS={TOTAL_STEPS}",
    f"--gin.CHECKPOINT_PERIOD={RESTORED_STEP}",
    "--gin.EVAL_PERIOD=0",
    "--gin.train.progress_bar=False",
    "--gin.train.data_source='synthetic'",
    "--gin.ModelConfig.num_encoder_layers=1",
    "--gin.ModelConfig.num_decoder_layers=1",
]
TARGETS = {  # name: (processes, devices per process, data, fsdp, tensor, rules)
    "one_process": (1, 4, 1, 4, 1, "fsdp"),
    "four_processes": (4, 2, 4, 2, 1, "fsdp"),
    "other_rules": (1, 4, 1, 2, 2, "fsdp_tensor"),
}


def _mesh_args(data: int, fsdp: int, tensor: int, rules: str) -> list[str]:
    return [
        f"--gin.MESH_DATA={data}",
        f"--gin.MESH_FSDP={fsdp}",
        f"--gin.MESH_TENSOR={tensor}",
        f"--gin.PARTITION_RULES='{rules}'",
    ]


def _launch(work: str, name: str, processes: int, devices: int, args: list[str], env: dict):
    """Run one job to its end; returns its logs (fails the test, with them, otherwise)."""
    record_dir = os.path.join(work, f"records_{name}")
    job = Job(work, name, processes)
    job.start(
        range(processes),
        args,
        devices,
        env,
        entry=(HARNESS, record_dir, "global"),
    )
    codes = job.wait_all(LAUNCH_TIMEOUT_S)
    job.kill()
    if codes != [0] * processes:
        pytest.fail(f"{name}: exit codes {codes}\n{job.tails()}")
    return job.logs(), record_dir


def _losses(model_dir: str) -> dict[int, float]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> str:
    """The module's scratch directory."""
    return str(tmp_path_factory.mktemp("topology"))


@pytest.fixture(scope="module")
def env(jax_cache_dir) -> dict[str, str]:
    """The launches' environment, with the session's JAX compilation cache (conftest.py)."""
    return cached_train_env(jax_cache_dir)


@pytest.fixture(scope="module")
def writer(work, env) -> dict:
    """Two processes x 4 devices, data=2 x fsdp=4, to step TOTAL_STEPS."""
    model_dir = os.path.join(work, "writer")
    args = [*COMMON_ARGS, *_mesh_args(2, 4, 1, "fsdp"), "--model_dir", model_dir]
    logs, _ = _launch(work, "writer", 2, 4, args, env)
    assert "data=2, fsdp=4" in logs[0] and "8 x cpu, 2 process(es)" in logs[0], logs[0][-2000:]
    step_dir = os.path.join(model_dir, "checkpoints", str(RESTORED_STEP))
    return {"model_dir": model_dir, "losses": _losses(model_dir), "digests": read_digests(step_dir)}


@pytest.mark.parametrize(
    "target",
    [
        "one_process",
        pytest.param("four_processes", marks=pytest.mark.slow),  # 4 compiles: ~3 min on 2 cores
        "other_rules",
    ],
)
def test_a_checkpoint_restores_onto_another_topology(target, writer, work, env):
    processes, devices, data, fsdp, tensor, rules = TARGETS[target]
    model_dir = os.path.join(work, target)
    shutil.copytree(writer["model_dir"], model_dir)
    shutil.rmtree(os.path.join(model_dir, "checkpoints", str(TOTAL_STEPS)))
    args = [*COMMON_ARGS, *_mesh_args(data, fsdp, tensor, rules), "--model_dir", model_dir]
    logs, record_dir = _launch(work, target, processes, devices, args, env)
    assert f"Resuming from checkpoint step {RESTORED_STEP} " in logs[0], logs[0][-2000:]
    assert f"{processes * devices} x cpu, {processes} process(es)" in logs[0]
    for process in range(processes):
        with open(os.path.join(record_dir, f"restored_{process}.json")) as f:
            restored = json.load(f)
        assert restored["step"] == RESTORED_STEP
        recorded = writer["digests"]["arrays"]
        assert sorted(restored["arrays"]) == sorted(recorded)
        differ = [k for k in recorded if restored["arrays"][k] != recorded[k]]
        assert not differ, f"restored arrays differ from checkpoint {RESTORED_STEP}: {differ}"
    losses, reference = _losses(model_dir), writer["losses"]
    assert sorted(losses) == sorted(reference) == list(range(1, TOTAL_STEPS + 1))
    continued = range(RESTORED_STEP + 1, TOTAL_STEPS + 1)
    np.testing.assert_allclose(
        [losses[s] for s in continued], [reference[s] for s in continued], rtol=0, atol=1e-5
    )
