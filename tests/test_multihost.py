"""Multi-process training on one machine: two `alexatm-train` processes joined by
`jax.distributed` over 127.0.0.1, four CPU devices each, one data=2 x fsdp=4 mesh spanning both
(cross-process collectives: gloo, jax's CPU default).

What is checked, against a one-process run on eight devices with the same mesh and global batch:
- each process reads its own data shard (process i: shard i of 2): its rows are the rows of that
  shard, and the text behind them comes from documents the other process never read;
- the losses of every step agree within 1e-5;
- a fresh two-process launch resumes from the checkpoint the first one wrote and continues with
  the same losses and the same data.

Same global batch: each process reads shard i of 2 of the SeqIO stream (tasks shard by file), so
a plain one-process run (shard 0 of 1) would see other examples. The reference therefore reads
shards 0 and 1 of 2 itself and stacks their rows in shard order (tests/multihost_harness.py),
which is how the two processes' rows form the global batch (process 0 holds rows 0..3).
The learning rate is constant, so that a run to step 4 continued to step 6 is comparable with a
6-step run. The reference runs alongside the first two-process launch (the two processes'
waits on each other leave CPU to spare). Every process is killed when its launch fails or
exceeds its time limit.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from multihost_launch import free_port, train_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(REPO, "tests", "multihost_harness.py")
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
FIRST_STEPS = 4
TOTAL_STEPS = 6
BATCH_SIZE = 8
ROWS_PER_PROCESS = BATCH_SIZE // NUM_PROCESSES
COMMON_ARGS = [
    "--gin_file=gin/experiments/smoke_cpu.gin",
    f"--gin.BATCH_SIZE={BATCH_SIZE}",
    "--gin.MESH_DATA=2",
    "--gin.MESH_FSDP=4",
    "--gin.PARTITION_RULES='fsdp'",
    f"--gin.CHECKPOINT_PERIOD={FIRST_STEPS}",
    "--gin.EVAL_PERIOD=0",
    "--gin.train.progress_bar=False",
    "--gin.ModelConfig.num_encoder_layers=1",
    "--gin.ModelConfig.num_decoder_layers=1",
    "--gin.OptimizerConfig.end_learning_rate=1e-3",  # = smoke_cpu's learning_rate: constant
]
LAUNCH_TIMEOUT_S = 300
FEATURES_COMPARED = ("encoder_input_tokens", "decoder_target_tokens")
NGRAM = 5  # words; a document counts as read when MIN_NGRAMS of its own 5-grams were seen
MIN_NGRAMS = 3
COMPILATION_CACHE: dict[str, str] = {}  # JAX persistent cache shared by this module's launches


def _env(**extra: str) -> dict[str, str]:
    return train_env(**COMPILATION_CACHE, **extra)


def _command(record_dir: str, read_shards: int, model_dir: str, *extra: str) -> list[str]:
    return (
        [sys.executable, HARNESS, record_dir, str(read_shards)]
        + COMMON_ARGS
        + ["--model_dir", model_dir]
        + list(extra)
    )


def _run_all(commands: list[list[str]], envs: list[dict], log_dir: str, name: str) -> list[str]:
    """Start the processes together, wait for all; returns their logs. Kills every process and
    fails the test when one exits non-zero or the launch exceeds LAUNCH_TIMEOUT_S."""
    os.makedirs(log_dir, exist_ok=True)
    paths = [os.path.join(log_dir, f"{name}_process_{i}.log") for i in range(len(commands))]
    processes = []
    for command, env, path in zip(commands, envs, paths):
        with open(path, "w") as log:
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    problem = None
    while problem is None and any(p.poll() is None for p in processes):
        failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
        if failed:
            problem = f"process {failed[0]} exited with {processes[failed[0]].returncode}"
        elif time.monotonic() > deadline:
            problem = f"timed out after {LAUNCH_TIMEOUT_S} s"
        else:
            time.sleep(0.2)
    if problem is None and any(p.returncode for p in processes):
        problem = f"exit codes {[p.returncode for p in processes]}"
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    logs = [open(path).read() for path in paths]
    if problem:
        tails = "\n".join(f"--- {path} ---\n{log[-3000:]}" for path, log in zip(paths, logs))
        pytest.fail(f"{name}: {problem}\n{tails}")
    return logs


def _two_process_job(
    model_dir: str, record_dir: str, *extra: str, through_env: bool = False
) -> tuple[list[list[str]], list[dict[str, str]]]:
    """The commands and environments of one two-process run (jax.distributed over 127.0.0.1).

    The processes get their coordinates as flags, or with `through_env` as ALEXATM_* variables.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    commands, envs = [], []
    for process_id in range(NUM_PROCESSES):
        coordinates = {
            "num_cpu_devices": DEVICES_PER_PROCESS,
            "coordinator_address": address,
            "num_processes": NUM_PROCESSES,
            "process_id": process_id,
        }
        env = _env(JAX_COORDINATOR_BIND_ADDRESS=address)  # the coordinator listens on loopback only
        command = _command(record_dir, 1, model_dir, *extra)
        if through_env:
            env.update({f"ALEXATM_{k.upper()}": str(v) for k, v in coordinates.items()})
        else:
            command += [arg for k, v in coordinates.items() for arg in (f"--{k}", str(v))]
        commands.append(command)
        envs.append(env)
    return commands, envs


def _launch_two_processes(
    model_dir: str, record_dir: str, log_dir: str, name: str, *extra: str, through_env: bool = False
) -> list[str]:
    """One two-process run (`_two_process_job`); returns the two logs."""
    commands, envs = _two_process_job(model_dir, record_dir, *extra, through_env=through_env)
    return _run_all(commands, envs, log_dir, name)


def _losses(model_dir: str) -> dict[int, float]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in records}


def _records(record_dir: str, process: int) -> dict[str, np.ndarray]:
    with np.load(os.path.join(record_dir, f"process_{process}.npz")) as data:
        return dict(data)


def _word_ngrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())  # the pipeline may drop case and punctuation
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def _corpus_documents() -> list[str]:
    """Every document of data/sample (blank-line separated paragraphs of its .txt files)."""
    documents = []
    for path in sorted(glob.glob(os.path.join(REPO, "data", "sample", "*", "*.txt"))):
        with open(path, encoding="utf-8") as f:
            documents += [d for d in re.split(r"\n\s*\n", f.read()) if d.strip()]
    return documents


def _documents_read(
    records: dict[str, np.ndarray], vocab_path: str, documents: list[str]
) -> set[int]:
    """Indices of the `documents` whose text the recorded token rows contain: a document is
    read when at least MIN_NGRAMS word n-grams that occur in no other document were decoded."""
    import sentencepiece

    owners = collections.defaultdict(set)
    for index, document in enumerate(documents):
        for gram in _word_ngrams(document):
            owners[gram].add(index)
    processor = sentencepiece.SentencePieceProcessor(model_file=vocab_path)
    hits = collections.Counter()
    for name, rows in records.items():
        if name.rsplit(".", 1)[1] in FEATURES_COMPARED:
            for row in rows.reshape(-1, rows.shape[-1]):
                for gram in _word_ngrams(processor.decode(row.tolist())):
                    if len(owners.get(gram, ())) == 1:
                        hits[next(iter(owners[gram]))] += 1
    return {index for index, count in hits.items() if count >= MIN_NGRAMS}


def _checkpoint_steps(model_dir: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(model_dir, "checkpoints")) if n.isdigit())


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory, demo_vocabulary, jax_cache_dir) -> str:
    """The module's scratch directory (every run here uses the demo vocabulary: trained first)."""
    COMPILATION_CACHE.update(
        JAX_COMPILATION_CACHE_DIR=jax_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return str(tmp_path_factory.mktemp("multihost"))


@pytest.fixture(scope="module")
def first_launches(work_dir: str) -> dict[str, dict]:
    """Started together (they are independent, and two processes joined over gloo leave CPU
    idle): the one-process reference (eight devices, the same mesh, reading shards 0 and 1 of 2
    itself, TOTAL_STEPS) and the two processes training to step FIRST_STEPS."""
    one_dir, one_records = os.path.join(work_dir, "one_process"), os.path.join(work_dir, "rec1")
    two_dir, two_records = os.path.join(work_dir, "two_process"), os.path.join(work_dir, "rec2")
    one_command = _command(
        one_records,
        NUM_PROCESSES,
        one_dir,
        f"--gin.TRAIN_STEPS={TOTAL_STEPS}",
        "--num_cpu_devices",
        str(NUM_PROCESSES * DEVICES_PER_PROCESS),
    )
    commands, envs = _two_process_job(two_dir, two_records, f"--gin.TRAIN_STEPS={FIRST_STEPS}")
    *two_logs, one_log = _run_all([*commands, one_command], [*envs, _env()], work_dir, "first")
    reference = {"model_dir": one_dir, "record_dir": one_records, "log": one_log}
    two_processes = {
        "model_dir": two_dir,
        "record_dir": two_records,
        "logs": two_logs,
        "losses": _losses(two_dir),
        "checkpoints": _checkpoint_steps(two_dir),
    }  # read before anything resumes
    return {"reference": reference, "two_processes": two_processes}


@pytest.fixture(scope="module")
def reference(first_launches: dict[str, dict]) -> dict[str, str]:
    """One process, eight devices, the same mesh; reads shards 0 and 1 of 2 itself."""
    log = first_launches["reference"]["log"]
    assert "data=2, fsdp=4" in log and "8 x cpu, 1 process(es)" in log, log[-2000:]
    return first_launches["reference"]


@pytest.fixture(scope="module")
def two_processes(first_launches: dict[str, dict]) -> dict:
    """Two processes train to step FIRST_STEPS; the losses are read before anything resumes."""
    return first_launches["two_processes"]


@pytest.fixture(scope="module")
def resumed(two_processes: dict, work_dir: str) -> dict:
    """A fresh two-process launch (coordinates from ALEXATM_* variables) continues to step
    TOTAL_STEPS in the same MODEL_DIR."""
    record_dir = os.path.join(work_dir, "rec3")
    logs = _launch_two_processes(
        two_processes["model_dir"],
        record_dir,
        work_dir,
        "resumed",
        f"--gin.TRAIN_STEPS={TOTAL_STEPS}",
        through_env=True,
    )
    return {
        "record_dir": record_dir,
        "logs": logs,
        "losses": _losses(two_processes["model_dir"]),
        "checkpoints": _checkpoint_steps(two_processes["model_dir"]),
    }


def test_each_process_reads_its_own_shard_of_the_global_batch(two_processes, reference):
    log = two_processes["logs"][0]
    assert "data=2, fsdp=4" in log and "8 x cpu, 2 process(es)" in log, log[-2000:]
    assert all(f"finished at step {FIRST_STEPS}" in lg for lg in two_processes["logs"])
    stacked = _records(reference["record_dir"], 0)
    rows_seen = []
    for process in range(NUM_PROCESSES):
        read = _records(two_processes["record_dir"], process)
        prefix = f"shard{process}of{NUM_PROCESSES}."
        assert read and all(k.startswith(prefix) for k in read), sorted(read)
        for feature in FEATURES_COMPARED:
            rows = read[prefix + feature]
            assert rows.shape[:2] == (FIRST_STEPS, ROWS_PER_PROCESS)
            # The one-process reference read the same shard and got the same rows.
            np.testing.assert_array_equal(rows, stacked[prefix + feature][:FIRST_STEPS])
        rows_seen.append(
            {
                row.tobytes()
                for row in read[prefix + "decoder_target_tokens"].reshape(
                    -1, read[prefix + "decoder_target_tokens"].shape[-1]
                )
            }
        )
    assert len(rows_seen[0]) == FIRST_STEPS * ROWS_PER_PROCESS
    assert not rows_seen[0] & rows_seen[1], "both processes read identical target rows"
    # The text behind the rows: the two processes read disjoint sets of corpus documents.
    documents = _corpus_documents()
    (vocab_path,) = glob.glob(os.path.join(two_processes["model_dir"], "tokenizer", "*.model"))
    by_process = [
        _documents_read(_records(two_processes["record_dir"], process), vocab_path, documents)
        for process in range(NUM_PROCESSES)
    ]
    assert min(len(d) for d in by_process) >= 3, [sorted(d) for d in by_process]
    shared = by_process[0] & by_process[1]
    assert not shared, f"documents read by both processes: {sorted(shared)}"


def test_two_process_losses_match_the_one_process_run(two_processes, reference):
    two, one = two_processes["losses"], _losses(reference["model_dir"])
    assert sorted(two) == list(range(1, FIRST_STEPS + 1))
    np.testing.assert_allclose(
        [two[s] for s in sorted(two)], [one[s] for s in sorted(two)], rtol=0, atol=1e-5
    )
    assert two_processes["checkpoints"] == [FIRST_STEPS]


def test_a_fresh_two_process_launch_resumes_their_checkpoint(resumed, two_processes, reference):
    assert f"Resuming from checkpoint step {FIRST_STEPS}" in resumed["logs"][0]
    assert all(f"finished at step {TOTAL_STEPS}" in log for log in resumed["logs"])
    assert resumed["checkpoints"] == [FIRST_STEPS, TOTAL_STEPS]
    one = _losses(reference["model_dir"])
    assert sorted(resumed["losses"]) == sorted(one) == list(range(1, TOTAL_STEPS + 1))
    np.testing.assert_allclose(
        [resumed["losses"][s] for s in sorted(one)],
        [one[s] for s in sorted(one)],
        rtol=0,
        atol=1e-5,
    )
    # Each process's data stream continued exactly where its shard stopped.
    stacked = _records(reference["record_dir"], 0)
    for process in range(NUM_PROCESSES):
        prefix = f"shard{process}of{NUM_PROCESSES}."
        read = _records(resumed["record_dir"], process)
        for feature in FEATURES_COMPARED:
            np.testing.assert_array_equal(
                read[prefix + feature], stacked[prefix + feature][FIRST_STEPS:TOTAL_STEPS]
            )
