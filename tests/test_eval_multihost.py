"""alexatm-eval as a job of 2 real processes (one emulated CPU device each): each computes its
rows of every batch, the results are gathered, process 0 writes them, and they equal the
results of one process with both devices."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from inference_helpers import train_tiny_sentencepiece
from multihost_launch import Job, cached_train_env

from alexatm_jax.checkpoints import save_model_checkpoint
from alexatm_jax.model import init_params
from alexatm_jax.tokenization import Tokenizer

ENTRY = ("-m", "alexatm_jax.cli.evaluate")
ROWS = [
    {"document": "Short doc number one.", "summary": "One."},
    {"document": "The river flows through the old city.", "summary": "A river."},
    {"document": "Cats sleep a lot.", "summary": "Cats sleep."},
    {"document": "Rain fell on the hills all night.", "summary": "Rain."},
    {"document": "The market opens at dawn.", "summary": "Market at dawn."},
]


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory, tiny_model_config) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("eval_multihost")
    spm_path = train_tiny_sentencepiece(str(root))
    config = tiny_model_config.replace(
        vocab_size=Tokenizer(spm_path).vocab_size, max_positions=256, init_std=0.5
    )
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    checkpoint = save_model_checkpoint(root / "ckpt", config, params, [spm_path])
    data = root / "data" / "xsum"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return checkpoint, root / "data"


def _evaluate(
    tmp_path, checkpoint_and_data, jax_cache_dir, name: str, processes: int
) -> pathlib.Path:
    checkpoint, data = checkpoint_and_data
    out = tmp_path / name
    args = [
        "--checkpoint", str(checkpoint), "--task", "xsum", "--data_dir", str(data),
        "--limit", "5", "--batch_size", "4", "--max_new_tokens", "6", "--rules", "data_parallel",
        "--out", str(out),
    ]  # fmt: skip
    job = Job(str(tmp_path / "logs"), name, processes)
    job.start(range(processes), args, 2 // processes, cached_train_env(jax_cache_dir), entry=ENTRY)
    try:
        codes = job.wait_all(timeout_s=240)
    finally:
        job.kill()
    assert codes == [0] * processes, job.tails()
    wrote = ["\nwrote " in log for log in job.logs()]
    assert wrote == [True] + [False] * (processes - 1), job.tails()  # process 0 alone writes
    return out


def test_two_processes_evaluate_their_rows_and_process_0_writes_the_same_results(
    tmp_path, checkpoint_and_data, jax_cache_dir
):
    one = _evaluate(tmp_path, checkpoint_and_data, jax_cache_dir, "one", 1)
    two = _evaluate(tmp_path, checkpoint_and_data, jax_cache_dir, "two", 2)
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    predictions = [(out / "predictions.jsonl").read_text().splitlines() for out in (one, two)]
    assert len(predictions[0]) == 5 and predictions[1] == predictions[0]
    assert len({json.loads(line)["prediction"] for line in predictions[0]}) > 1  # not all alike
    metrics = [json.loads((out / "results.json").read_text())["metrics"] for out in (one, two)]
    assert metrics[1] == metrics[0]
