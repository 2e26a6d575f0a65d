"""gs:// end to end: the real CLIs against a GCS server on 127.0.0.1 (tests/gcs_server.py).

One bucket holds the corpus (English gzipped), the vocabulary, prompts and evaluation data. On it:
- a reference run trains on that corpus (DATA_DIR, vocab_path in the bucket) into a gs://
  MODEL_DIR, through injected transient errors that the clients retry;
- a second run is killed (-9) after its step-4 checkpoint; a flipped byte in that checkpoint is
  reported by `alexatm-info --verify`, and the relaunch falls back to step 2 and continues with
  the reference's losses, bit for bit;
- a fine-tuning run takes its model from that gs:// MODEL_DIR and its pairs from the bucket;
- `alexatm_jax.load`, `alexatm-generate`, `alexatm-eval --suite` and `alexatm-inspect` read from
  and write to the bucket;
- two processes train one MODEL_DIR in the bucket (tests/test_multihost.py's launcher; slow);
- a missing bucket, no credentials and no permission stop a command with exit 2 in seconds,
  naming the bucket; a checkpoint that cannot be written stops training with exit 1 and leaves
  the previous checkpoint intact.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
import test_multihost
import test_trainer_cli
from test_trainer_cli import COMMON_ARGS, HARNESS, REPO, TIMEOUT_S

from alexatm_jax import gcs_access

BUCKET = "alexatm-test"
DATA = f"gs://{BUCKET}/corpus"
VOCAB = f"gs://{BUCKET}/vocab/demo.model"
STEPS = 6
ARGS = [
    *COMMON_ARGS,
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.CHECKPOINT_PERIOD=2",
    "--gin.train.keep_checkpoints=3",
    f"--gin.train.data_dir='{DATA}'",
    f"--gin.MixtureConfig.vocab_path='{VOCAB}'",
]
LOAD_AND_EXPORT = """
import sys
import numpy as np
import alexatm_jax
from alexatm_jax.checkpoints import save_model_checkpoint
from alexatm_jax.cli import convert

trained = alexatm_jax.load(sys.argv[1])
save_model_checkpoint(sys.argv[2], trained.config, trained.params, [trained.tokenizer_path])
exported = alexatm_jax.load(sys.argv[2])
batch = {"encoder_input_tokens": np.ones((1, 4), int), "decoder_input_tokens": np.ones((1, 3), int)}
assert np.array_equal(trained.logits(batch), exported.logits(batch))
print(exported.config.d_model, exported.tokenizer_path)
sys.exit(convert.main(["jax-to-hf", "--checkpoint", sys.argv[2], "--out", sys.argv[3]]))
"""  # alexatm_jax.load of a gs:// MODEL_DIR, a model checkpoint saved to and loaded from gs://,
# then alexatm-convert jax-to-hf from and to the bucket (its main, in the same process)
FAIL_FAST_S = 60  # a refused command's whole run, Python, JAX and TensorFlow imports included


@pytest.fixture(scope="module")
def bucket(gcs_server, demo_vocabulary, jax_cache_dir) -> str:
    """The test bucket with the corpus (data/sample en gzipped, fr plain), the demo vocabulary,
    prompts and xsum evaluation data; also points the launches at the session's compilation cache."""
    test_trainer_cli.COMPILATION_CACHE.update(
        JAX_COMPILATION_CACHE_DIR=jax_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    gcs_server.create_bucket(BUCKET)
    for language in ("en", "fr"):
        folder = os.path.join(REPO, "data", "sample", language)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            if language == "en":
                data, name = gzip.compress(data), name + ".gz"
            gcs_server.upload(BUCKET, f"corpus/{language}/{name}", data)
    with open(demo_vocabulary, "rb") as f:
        gcs_server.upload(BUCKET, "vocab/demo.model", f.read())
    gcs_server.upload(BUCKET, "prompts.txt", b"[CLM] The river\nLe chat\n")
    rows = [
        {"document": "Short doc number one.", "summary": "One."},
        {"document": "The river flows through the old city.", "summary": "A river."},
    ]
    for split in ("train", "test"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        gcs_server.upload(BUCKET, f"eval/xsum/{split}.jsonl", text.encode())
    pairs = [{"input": f"the river {n}", "target": f"le fleuve {n}"} for n in range(8)]
    text = "".join(json.dumps(p) + "\n" for p in pairs).encode()
    gcs_server.upload(BUCKET, "finetune/train.jsonl.gz", gzip.compress(text))
    gcs_server.upload(BUCKET, "finetune/validation.jsonl", text)
    return BUCKET


def _env(gcs_server, **changes: str | None) -> dict[str, str]:
    """test_trainer_cli's subprocess environment pointed at the GCS server; None unsets."""
    env = {**test_trainer_cli._env(), **gcs_server.environment()}
    for name, value in changes.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return env


def _run(gcs_server, command: list[str], env: dict[str, str] | None = None):
    """Run `command` in the repository; returns (finished process, seconds it took)."""
    start = time.monotonic()
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env or _env(gcs_server),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return done, time.monotonic() - start


def _run_together(
    gcs_server, commands: list[list[str]], envs: list[dict[str, str] | None] | None = None
) -> list[tuple[subprocess.CompletedProcess, float]]:
    """`_run` independent `commands` at the same time (their start-ups, mostly imports, and
    their waits on the server overlap); returns (finished process, seconds) of each in order."""
    envs = envs or [None] * len(commands)
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda c, e: _run(gcs_server, c, e), commands, envs))


def _cli(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"alexatm_jax.cli.{name}", *args]


def _losses(gcs_server, model_dir: str) -> dict[int, float]:
    text = gcs_server.download(BUCKET, f"{model_dir}/metrics.jsonl").decode()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in records}


def _committed_steps(gcs_server, model_dir: str) -> list[int]:
    """Checkpoint steps Orbax has committed (on GCS: those with commit_success.txt)."""
    committed = re.compile(rf"{model_dir}/checkpoints/(\d+)/commit_success\.txt")
    names = gcs_server.objects(BUCKET, f"{model_dir}/checkpoints/")
    return sorted(int(m.group(1)) for m in map(committed.fullmatch, names) if m)


@pytest.fixture(scope="module")
def reference(gcs_server, bucket) -> str:
    """gs:// MODEL_DIR `ref` of an uninterrupted run on the gs:// corpus. The first two metadata
    uploads and the first two array writes fail with 503 and are retried by the clients."""
    failures = [
        gcs_server.fail_next(r"POST /upload/.*name=ref%2Fmetrics\.jsonl", 503, times=2),  # gfile
        gcs_server.fail_next(r"POST /upload/.*name=ref%2Fcheckpoints%2F2%2Fstate%2Focdbt", 503, 2),
    ]  # the second: tensorstore's array writes
    done, _ = _run(gcs_server, _cli("train", *ARGS, "--model_dir", f"gs://{bucket}/ref"))
    gcs_server.clear_failures()
    assert done.returncode == 0, done.stderr[-3000:]
    assert [failure.times for failure in failures] == [0, 0]  # every injected error happened
    assert "skipping" not in done.stderr  # the .gz files were read, not skipped
    return "ref"


def test_training_on_gs_data_writes_a_complete_model_dir(gcs_server, reference):
    assert sorted(_losses(gcs_server, reference)) == list(range(1, STEPS + 1))
    assert _committed_steps(gcs_server, reference) == [2, 4, 6]
    names = gcs_server.objects(BUCKET, f"{reference}/")
    for expected in ("model_config.json", "config.gin", "tokenizer/demo.model"):
        assert f"{reference}/{expected}" in names
    assert any(n.startswith(f"{reference}/tensorboard/events.") for n in names)


# Marked slow (about 1 minute): reading a model from the bucket is covered by the inference
# test below, and fine-tuning itself by test_finetuning_parity.py.
@pytest.mark.slow
def test_finetuning_reads_its_model_and_pairs_from_the_bucket(gcs_server, reference):
    """gin/experiments/finetune.gin with INIT_FROM the gs:// MODEL_DIR above and FINETUNE_DATA
    in the bucket (train gzipped): the model and tokenizer come from the bucket, the task's BLEU
    is scored, and the best checkpoint is kept in the gs:// MODEL_DIR."""
    done, _ = _run(
        gcs_server,
        _cli(
            "train",
            "--gin_file=gin/experiments/finetune.gin",
            "--model_dir",
            f"gs://{BUCKET}/finetuned",
            f"--gin.INIT_FROM='gs://{BUCKET}/{reference}'",
            f"--gin.FINETUNE_DATA='gs://{BUCKET}/finetune'",
            "--gin.TRAIN_STEPS=2",
            "--gin.OptimizerConfig.warmup_steps=1",
            "--gin.BATCH_SIZE=4",
            "--gin.CHECKPOINT_PERIOD=2",
            "--gin.EVAL_PERIOD=2",
            "--gin.train.eval_steps=1",
            "--gin.train.progress_bar=False",
            "--gin.train.sequence_length={'inputs': 16, 'targets': 8}",
            "--gin.TaskMetricEval.max_examples=2",
            "--gin.TaskMetricEval.max_new_tokens=4",
        ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = gcs_server.download(BUCKET, "finetuned/metrics.jsonl").decode().splitlines()
    scored = [json.loads(r) for r in records if "eval_finetune/bleu" in r]
    assert [r["step"] for r in scored] == [2]
    best = json.loads(gcs_server.download(BUCKET, "finetuned/best/best.json"))
    assert best["metric"] == "eval_finetune/bleu" and best["step"] == 2
    config = json.loads(gcs_server.download(BUCKET, "finetuned/model_config.json"))
    assert config["num_encoder_layers"] == 1  # the reference's, from the bucket


def test_kill_corrupt_verify_and_resume_bit_identically(gcs_server, reference, tmp_path):
    model_dir = "killed"
    url = f"gs://{BUCKET}/{model_dir}"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, HARNESS, "1.0", *ARGS, "--model_dir", url],
            cwd=REPO,
            env=_env(gcs_server),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    test_trainer_cli.wait_for(
        lambda: 4 in _committed_steps(gcs_server, model_dir), "checkpoint 4", process
    )
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -9

    # Flip bytes in the largest array file of checkpoint 4 (OCDBT does not notice; digests do).
    state = gcs_server.objects(BUCKET, f"{model_dir}/checkpoints/4/state/")
    victim = max(state, key=state.get)
    data = bytearray(gcs_server.download(BUCKET, victim))
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 :][:8])
    gcs_server.upload(BUCKET, victim, bytes(data))

    verified, _ = _run(gcs_server, _cli("info", "--verify", url))
    assert verified.returncode == 1, verified.stderr[-2000:]
    assert f"{url}/checkpoints/4: CORRUPT" in verified.stdout
    assert f"{url}/checkpoints/2: verified" in verified.stdout

    resumed, _ = _run(gcs_server, _cli("train", *ARGS, "--model_dir", url))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoints_unreadable" in resumed.stderr + resumed.stdout
    assert _losses(gcs_server, model_dir) == _losses(gcs_server, reference)  # bit-identical
    assert _committed_steps(gcs_server, model_dir) == [2, 4, 6]


def test_load_generate_eval_and_inspect_read_and_write_the_bucket(gcs_server, reference):
    """The four commands run side by side (they share only the bucket's inputs)."""
    url = f"gs://{BUCKET}/{reference}"
    exported = f"gs://{BUCKET}/exported"
    out = f"gs://{BUCKET}/out/generated.txt"
    generate = ["--checkpoint", url, "--input_file", f"gs://{BUCKET}/prompts.txt", "--output", out]
    evaluate = [
        "--checkpoint",
        url,
        "--suite",
        "summarization",
        "--data_dir",
        f"gs://{BUCKET}/eval",
    ]
    inspect = ["--mixture", "alexatm_pretrain_local", "--data_dir", DATA, "--vocab", VOCAB]
    limits = ["--limit", "2", "--max_new_tokens", "4"]
    languages = "MixtureConfig.languages=('en', 'fr')"
    (loaded, _), (generated, _), (evaluated, _), (inspected, _) = _run_together(
        gcs_server,
        [
            [sys.executable, "-c", LOAD_AND_EXPORT, url, exported, f"gs://{BUCKET}/hf"],
            _cli("generate", *generate, "--max_new_tokens", "4"),
            _cli("evaluate", *evaluate, "--out", f"gs://{BUCKET}/eval_out", *limits),
            _cli("inspect_mixture", *inspect, "--gin_param", languages, "-n", "2"),
        ],
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.splitlines()[0].split() == ["64", f"{exported}/tokenizer/demo.model"]
    hf = gcs_server.objects(BUCKET, "hf/")
    assert {"hf/config.json", "hf/model.safetensors", "hf/demo.model"} <= set(hf)

    assert generated.returncode == 0, generated.stderr[-2000:]
    assert len(gcs_server.download(BUCKET, "out/generated.txt").decode().splitlines()) == 2

    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    summary = json.loads(gcs_server.download(BUCKET, "eval_out/summary.json"))
    assert "xsum" in summary["tasks"]
    results = json.loads(gcs_server.download(BUCKET, "eval_out/xsum/results.json"))
    assert results["metrics"]["num_examples"] == 2

    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert inspected.stdout.count("--- example") == 2 and "targets:" in inspected.stdout
    assert "skipping" not in inspected.stderr  # en's .gz files are read


@pytest.mark.slow  # the heaviest launch (2 x 4 devices); tests/test_multihost.py runs it locally
def test_two_processes_train_one_model_dir_in_the_bucket(gcs_server, bucket, tmp_path, monkeypatch):
    for name, value in gcs_server.environment().items():  # the launcher copies os.environ
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(
        test_multihost.COMPILATION_CACHE, "JAX_COMPILATION_CACHE_DIR", str(tmp_path)
    )
    test_multihost._launch_two_processes(
        f"gs://{bucket}/multi",
        str(tmp_path / "records"),
        str(tmp_path / "logs"),
        "gcs",
        "--gin.TRAIN_STEPS=2",
        "--gin.CHECKPOINT_PERIOD=2",
    )
    assert sorted(_losses(gcs_server, "multi")) == [1, 2]
    assert _committed_steps(gcs_server, "multi") == [2]


@pytest.fixture(scope="module")
def refused(
    gcs_server, bucket, tmp_path_factory
) -> dict[str, tuple[str, subprocess.CompletedProcess, float]]:
    """A training run on an unusable gs:// MODEL_DIR for each problem, the three side by side:
    {problem: (what its error must say, finished process, seconds it took)}."""
    home = str(tmp_path_factory.mktemp("no_credentials"))
    no_credentials = _env(  # and no GCE metadata server to ask: NO_GCE_CHECK
        gcs_server,
        STORAGE_EMULATOR_HOST=None,
        GOOGLE_APPLICATION_CREDENTIALS=None,
        HOME=home,
        CLOUDSDK_CONFIG=home,
    )
    launches = {  # problem: (MODEL_DIR, environment, expected error)
        "missing bucket": (
            "gs://alexatm-no-such-bucket/run",
            None,
            "the bucket gs://alexatm-no-such-bucket does not exist",
        ),
        "no credentials": (f"gs://{bucket}/refused", no_credentials, "no Google Cloud credentials"),
        "no permission": (f"gs://{bucket}/refused", None, f"no permission on bucket gs://{bucket}"),
    }  # only the permission check writes to the test bucket: it gets the one 403
    gcs_server.fail_next(rf"POST /upload/storage/v1/b/{bucket}/o", 403, times=1)
    args = [*ARGS, "--gin.train.data_source='synthetic'", "--model_dir"]
    done = _run_together(
        gcs_server,
        [_cli("train", *args, model_dir) for model_dir, _, _ in launches.values()],
        [env for _, env, _ in launches.values()],
    )
    gcs_server.clear_failures()
    return {
        problem: (expected, *result)
        for (problem, (_, _, expected)), result in zip(launches.items(), done)
    }


@pytest.mark.parametrize("problem", ["missing bucket", "no credentials", "no permission"])
def test_an_unusable_bucket_is_refused_with_exit_2_in_seconds(refused, problem):
    expected, done, seconds = refused[problem]
    assert done.returncode == 2, done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("alexatm-train: error: MODEL_DIR gs://") and expected in error
    assert seconds < FAIL_FAST_S
    print(f"{problem}: exit 2 after {seconds:.1f} s")


def test_transient_errors_are_retried_with_logged_bounded_back_off(
    gcs_server, bucket, monkeypatch, caplog
):
    for name, value in gcs_server.environment().items():
        monkeypatch.setenv(name, value)
    gcs_server.fail_next(rf"GET /storage/v1/b/{bucket}/o\?", 503, times=2)
    with caplog.at_level(logging.WARNING, logger=gcs_access.__name__):
        gcs_access.check_gcs_path(f"gs://{bucket}/retried", what="MODEL_DIR", write=True)
    assert [r.message.count("transient error") for r in caplog.records] == [1, 1]

    monkeypatch.setattr(gcs_access, "RETRY_DEADLINE_S", 2.0)
    gcs_server.fail_next(rf"GET /storage/v1/b/{bucket}/o\?", 503, times=1000)
    start = time.monotonic()
    with pytest.raises(gcs_access.GcsAccessError, match=f"bucket gs://{bucket} could not be"):
        gcs_access.check_gcs_path(f"gs://{bucket}/retried", what="MODEL_DIR", write=True)
    gcs_server.clear_failures()
    assert time.monotonic() - start < 10


def test_a_checkpoint_that_cannot_be_written_stops_with_exit_1(gcs_server, bucket):
    model_dir = "unsaved"
    url = f"gs://{bucket}/{model_dir}"
    gcs_server.fail_next(rf"/upload/.*name={model_dir}%2Fcheckpoints%2F4%2F", 503, times=10**6)
    done, _ = _run(
        gcs_server,
        _cli("train", *ARGS, "--gin.train.data_source='synthetic'", "--model_dir", url),
    )
    gcs_server.clear_failures()
    assert done.returncode == 1, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert f"saving checkpoint step 4 in {url}/checkpoints failed" in error
    assert "the previous checkpoints are intact: [2]" in error
    verified, _ = _run(gcs_server, _cli("info", "--verify", f"{url}/checkpoints/2"))
    assert verified.returncode == 0 and ": verified:" in verified.stdout, verified.stderr[-2000:]
