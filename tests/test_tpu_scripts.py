"""Tests of tpu_scripts/: --help, --dry-run command sequences, argument validation, and the
remote/batch scripts themselves executed locally against stub trainers (no gcloud, no Slurm).

Every printed command line ("+ ...") is parsed back with shlex, so these tests also prove the
printed commands are exact. Where gcloud is installed, the printed gcloud commands are handed
to the real gcloud inside an empty network namespace: it must parse them (it then stops for
lack of credentials), so a misspelt or removed flag fails here.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "tpu_scripts"
ALL_SCRIPTS = [
    "create.sh",
    "setup.sh",
    "launch.sh",
    "logs.sh",
    "stop.sh",
    "delete.sh",
    "gke_launch.sh",
    "gpu/slurm_launch.sh",
    "gpu/single_node.sh",
]
V5P_GIN = "gin/experiments/alexatm_20b_v5p256.gin"
V4_GIN = "gin/experiments/alexatm_20b_v4_512.gin"
H100_GIN = "gin/experiments/alexatm_20b_h100_16x8.gin"
TPU = ["--name", "alexatm-v5p", "--zone", "us-east5-a"]


@pytest.fixture(scope="module")
def minimal_path(tmp_path_factory) -> str:
    """A PATH holding bash and a few coreutils only: no gcloud, sbatch, tar or python."""
    bin_dir = tmp_path_factory.mktemp("minimal_bin")
    for tool in ("bash", "basename", "dirname", "env", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def run_script(
    script: str, *args: str, path: str | None = None, env: dict | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Runs tpu_scripts/SCRIPT ARGS with bash; returns the completed process (text mode)."""
    full_env = dict(os.environ)
    if path is not None:
        full_env["PATH"] = path
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPTS_DIR / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def dry_run(script: str, *args: str, path: str) -> list[list[str]]:
    """Runs SCRIPT --dry-run ARGS (asserting success); returns the printed commands as argv lists."""
    result = run_script(script, "--dry-run", *args, path=path)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def flag_value(argv: list[str], flag: str) -> str:
    """The value of --flag=VALUE in argv (fails the test when absent)."""
    values = [word.split("=", 1)[1] for word in argv if word.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} not exactly once in {argv}"
    return values[0]


def assert_valid_bash(script_text: str) -> None:
    """Fails the test when bash cannot parse script_text."""
    result = subprocess.run(["bash", "-n", "-c", script_text], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# --help, missing flags, quoting


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_every_script_has_help(script, minimal_path):
    result = run_script(script, "--help", path=minimal_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")
    assert "--dry-run" in result.stdout


@pytest.mark.parametrize(
    "script,args,flag",
    [
        ("create.sh", ["--zone", "z", "--project", "p", "--accelerator_type", "v4-8"], "--name"),
        ("create.sh", ["--name", "a", "--zone", "z", "--accelerator_type", "v4-8"], "--project"),
        ("create.sh", ["--name", "a", "--zone", "z", "--project", "p"], "--accelerator_type"),
        ("setup.sh", ["--name", "a", "--source_dir", "."], "--zone"),
        ("setup.sh", ["--name", "a", "--zone", "z"], "--repo_url or --source_dir"),
        ("launch.sh", [*TPU, "--model_dir", "gs://b/r"], "--gin_file"),
        ("launch.sh", [*TPU, "--gin_file", V5P_GIN], "--model_dir"),
        ("logs.sh", ["--zone", "z"], "--name"),
        ("logs.sh", [*TPU, "--fetch_to", "out"], "--num_workers or --accelerator_type"),
        ("stop.sh", ["--name", "a"], "--zone"),
        ("delete.sh", ["--zone", "z"], "--name"),
        ("gpu/slurm_launch.sh", ["--gin_file", H100_GIN, "--model_dir", "gs://b/r"], "--nodes"),
        ("gpu/slurm_launch.sh", ["--nodes", "2", "--model_dir", "gs://b/r"], "--gin_file"),
        ("gpu/single_node.sh", ["--gin_file", H100_GIN], "--model_dir"),
    ],
)
def test_missing_required_flag_is_named(script, args, flag, minimal_path):
    result = run_script(script, "--dry-run", *args, path=minimal_path)
    assert result.returncode != 0
    assert f"missing required flag {flag}" in result.stderr
    assert "--help" in result.stderr


@pytest.mark.parametrize(
    "script,args,message",
    [
        (
            "create.sh",
            ["--name", "a", "--zone", "z", "--project", "p", "--accelerator_type", "v4-12"],
            "multiples of 8",
        ),
        (
            "create.sh",
            ["--name", "a", "--zone", "z", "--project", "p", "--accelerator_type", "v3-8"],
            "--accelerator_type must look like",
        ),
        (
            "create.sh",
            [
                "--name",
                "a",
                "--zone",
                "z",
                "--project",
                "p",
                "--accelerator_type",
                "v5p-8",
                "--queued",
                "--preemptible",
            ],
            "use --spot with --queued",
        ),
        (
            "create.sh",
            [
                "--name",
                "a",
                "--zone",
                "z",
                "--project",
                "p",
                "--accelerator_type",
                "v5p-8",
                "--spot",
                "--reserved",
            ],
            "at most one of --spot",
        ),
        (
            "create.sh",
            ["--name", "Bad_Name", "--zone", "z", "--project", "p", "--accelerator_type", "v4-8"],
            "--name must start with a lowercase letter",
        ),
        (
            "create.sh",
            [
                "--name",
                "a",
                "--zone",
                "z",
                "--project",
                "p",
                "--accelerator_type",
                "v4-8",
                "--bogus",
            ],
            "unknown argument '--bogus'",
        ),
        ("create.sh", ["--name"], "option --name needs a value"),
        (
            "setup.sh",
            ["--name", "a", "--zone", "z", "--source_dir", ".", "--repo_url", "u"],
            "either --repo_url or --source_dir",
        ),
        (
            "setup.sh",
            ["--name", "a", "--zone", "z", "--source_dir", "/nonexistent"],
            "not a directory",
        ),
        (
            "launch.sh",
            [*TPU, "--gin_file", V5P_GIN, "--model_dir", "/local/ckpt"],
            "--model_dir must be a gs://BUCKET/PATH on a multi-host slice",
        ),
        (
            "launch.sh",
            [
                *TPU,
                "--gin_file",
                V5P_GIN,
                "--model_dir",
                "/local/ckpt",
                "--accelerator_type",
                "v5p-256",
            ],
            "must be a gs://BUCKET/PATH",
        ),
        (
            "launch.sh",
            [*TPU, "--gin_file", "/abs/x.gin", "--model_dir", "gs://b/r"],
            "relative to the repository",
        ),
        (
            "launch.sh",
            [*TPU, "--gin_file", V5P_GIN, "--model_dir", "gs://b/r", "--gin.MODEL_DIR='gs://x'"],
            "pass the model directory as --model_dir",
        ),
        (
            "launch.sh",
            [*TPU, "--gin_file", V5P_GIN, "--model_dir", "gs://b/r", "--env", "1X=2"],
            "must look like KEY=VALUE",
        ),
        ("logs.sh", [*TPU, "--follow", "--worker", "all"], "--follow streams one worker"),
        ("stop.sh", [*TPU, "--timeout", "soon"], "--timeout must be a positive integer"),
        (
            "gpu/slurm_launch.sh",
            ["--nodes", "2", "--gin_file", H100_GIN, "--model_dir", "rel/ckpt"],
            "shared by all 2 nodes",
        ),
        (
            "gpu/slurm_launch.sh",
            ["--nodes", "0", "--gin_file", H100_GIN, "--model_dir", "gs://b/r"],
            "--nodes must be a positive integer",
        ),
        (
            "gpu/single_node.sh",
            ["--gin_file", H100_GIN, "--model_dir", "/c", "--mem_fraction", "2"],
            "--mem_fraction must be a number",
        ),
    ],
)
def test_invalid_arguments_fail_clearly(script, args, message, minimal_path):
    result = run_script(script, "--dry-run", *args, path=minimal_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_quote_args_round_trips_through_a_shell(tmp_path):
    words = [
        "plain",
        "two words",
        "it's",
        "$HOME",
        'a"b',
        "--gin.X='y z'",
        "",
        "*",
        "\\n",
        "mixed '$x' \"q\"",
    ]
    script = tmp_path / "quote.sh"
    script.write_text(f'source {shlex.quote(str(SCRIPTS_DIR / "common.sh"))}\nquote_args "$@"\n')
    printed = subprocess.run(
        ["bash", str(script), *words], capture_output=True, text=True, check=True
    ).stdout
    assert shlex.split(printed) == words
    echoed = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {printed}"], capture_output=True, text=True, check=True
    ).stdout
    assert echoed.split("\n")[:-1] == words


# --------------------------------------------------------------------------------------------
# create / delete


def test_create_queued_v5p_256(minimal_path):
    result = run_script(
        "create.sh",
        "--dry-run",
        *TPU,
        "--project",
        "my-proj",
        "--accelerator_type",
        "v5p-256",
        "--queued",
        "--spot",
        "--valid_until_duration",
        "6h",
        path=minimal_path,
    )
    assert result.returncode == 0, result.stderr
    assert "32 host(s)" in result.stdout
    [argv] = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "alexatm-v5p"]
    assert flag_value(argv, "--node-id") == "alexatm-v5p"
    assert flag_value(argv, "--accelerator-type") == "v5p-256"
    assert flag_value(argv, "--runtime-version") == "v2-alpha-tpuv5"
    assert flag_value(argv, "--zone") == "us-east5-a"
    assert flag_value(argv, "--project") == "my-proj"
    assert flag_value(argv, "--valid-until-duration") == "6h"
    assert "--spot" in argv and "--preemptible" not in argv


@pytest.mark.parametrize(
    "accelerator,runtime",
    [
        ("v4-512", "tpu-ubuntu2204-base"),
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v5p-256", "v2-alpha-tpuv5"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ],
)
def test_create_tpu_vm_uses_the_generation_runtime(accelerator, runtime, minimal_path):
    [argv] = dry_run(
        "create.sh",
        *TPU,
        "--project",
        "p",
        "--accelerator_type",
        accelerator,
        "--preemptible",
        "--network",
        "net",
        "--subnetwork",
        "sub",
        path=minimal_path,
    )
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "alexatm-v5p"]
    assert flag_value(argv, "--version") == runtime
    assert flag_value(argv, "--accelerator-type") == accelerator
    assert flag_value(argv, "--network") == "net" and flag_value(argv, "--subnetwork") == "sub"
    assert "--preemptible" in argv


def test_create_honours_an_explicit_runtime_version(minimal_path):
    [argv] = dry_run(
        "create.sh",
        *TPU,
        "--project",
        "p",
        "--accelerator_type",
        "v4-512",
        "--runtime_version",
        "tpu-vm-base",
        "--reserved",
        path=minimal_path,
    )
    assert flag_value(argv, "--version") == "tpu-vm-base" and "--reserved" in argv


def test_delete_commands_and_confirmation(minimal_path):
    [vm] = dry_run("delete.sh", *TPU, path=minimal_path)
    assert vm == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "delete",
        "alexatm-v5p",
        "--zone=us-east5-a",
        "--quiet",
    ]
    [queued] = dry_run(
        "delete.sh", *TPU, "--queued", "--async", "--project", "p", path=minimal_path
    )
    assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "alexatm-v5p"]
    assert {"--force", "--quiet", "--async", "--project=p"} <= set(queued)
    # Without --yes and without a terminal it refuses before touching anything.
    fake_bin = pathlib.Path(minimal_path)
    refused = run_script("delete.sh", *TPU, path=f"{fake_bin}:/usr/bin:/bin")
    if shutil.which("gcloud", path=f"{fake_bin}:/usr/bin:/bin"):
        assert refused.returncode != 0 and "pass --yes" in refused.stderr
    else:
        assert refused.returncode != 0 and "'gcloud' is not installed" in refused.stderr


# --------------------------------------------------------------------------------------------
# setup


def test_setup_from_source_dir_copies_to_all_workers(minimal_path):
    commands = dry_run(
        "setup.sh", *TPU, "--source_dir", str(REPO_ROOT), "--verify", path=minimal_path
    )
    tar, scp, install, verify = commands
    assert tar[0] == "tar" and "--exclude=./.venv" in tar and "--exclude=./.git" in tar
    tarball = tar[tar.index("-czf") + 1]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == tarball and scp[6] == "alexatm-v5p:alexatm-jax-src.tgz"
    assert "--worker=all" in scp
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "alexatm-v5p"]
    assert "--worker=all" in install
    remote = flag_value(install, "--command")
    assert_valid_bash(remote)
    assert "python3.11 -m venv" in remote
    assert 'pip install -q -r "$HOME"/alexatm-jax/requirements.txt' in remote
    assert '"jax[tpu]==$JAX_VERSION"' in remote
    assert 'pip install -q -e "$HOME"/alexatm-jax' in remote
    assert remote.index("requirements.txt") < remote.index("jax[tpu]") < remote.index('-e "$HOME')
    assert "--worker=all" in verify and "jax.distributed.initialize()" in flag_value(
        verify, "--command"
    )


def test_setup_installs_the_gcs_client_that_orbax_needs_for_gs_model_dirs():
    """setup.sh installs requirements.txt (test above); it must list google-cloud-storage, which
    Orbax imports for every gs:// checkpoint directory without declaring it."""
    requirements = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("google-cloud-storage") for line in requirements)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"google-cloud-storage' in pyproject.split("[project.optional-dependencies]")[0]


def test_setup_from_git_fetches_the_ref(minimal_path):
    [install] = dry_run(
        "setup.sh",
        *TPU,
        "--repo_url",
        "https://github.com/org/alexatm-jax.git",
        "--ref",
        "v1.2",
        "--python",
        "python3.12",
        "--venv",
        "venvs/a",
        path=minimal_path,
    )
    remote = flag_value(install, "--command")
    assert_valid_bash(remote)
    assert "fetch -q --depth 1 origin v1.2" in remote and "checkout -q --force FETCH_HEAD" in remote
    assert "remote add origin https://github.com/org/alexatm-jax.git" in remote
    assert 'python3.12 -m venv "$HOME"/venvs/a' in remote


# --------------------------------------------------------------------------------------------
# launch / logs / stop


def launched_words(remote: str) -> list[str]:
    """The words of the remote statement that starts the trainer ("$HOME" written as HOME)."""
    [line] = [part for part in remote.split("; ") if part.startswith("setsid ")]
    return shlex.split(line.replace('"$HOME"', "HOME"))


def test_launch_runs_alexatm_train_on_all_workers(minimal_path):
    bucket_check, ssh = dry_run(
        "launch.sh",
        *TPU,
        "--project",
        "p",
        "--gin_file",
        V5P_GIN,
        "--model_dir",
        "gs://my-bucket/alexatm/run1",
        "--gin.TRAIN_STEPS=1000",
        "--gin.BATCH_SIZE=2048",
        "--env",
        "LIBTPU_INIT_ARGS=--xla_tpu_x=true",
        path=minimal_path,
    )
    assert bucket_check[:5] == ["gcloud", "storage", "buckets", "describe", "gs://my-bucket"]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "alexatm-v5p"]
    assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh and "--project=p" in ssh
    remote = flag_value(ssh, "--command")
    assert_valid_bash(remote)
    words = launched_words(remote)
    assert words[:4] == ["setsid", "nohup", "env", "LIBTPU_INIT_ARGS=--xla_tpu_x=true"]
    trainer = words.index("HOME/alexatm-venv/bin/alexatm-train")
    assert words[trainer + 1 : trainer + 5] == [
        f"--gin_file={V5P_GIN}",
        "--gin.MODEL_DIR='gs://my-bucket/alexatm/run1'",
        "--gin.TRAIN_STEPS=1000",
        "--gin.BATCH_SIZE=2048",
    ]
    assert words[trainer + 5 :] == [
        ">>",
        "HOME/alexatm-logs/alexatm.log",
        "2>&1",
        "<",
        "/dev/null",
        "&",
        "echo",
        "$!",
        ">",
        "HOME/alexatm-logs/alexatm.pid",
    ]


def test_launch_allows_a_local_model_dir_on_one_host_and_v4_512_needs_gcs(minimal_path):
    [ssh] = dry_run(
        "launch.sh",
        *TPU,
        "--gin_file",
        V4_GIN,
        "--model_dir",
        "/tmp/ckpt",
        "--accelerator_type",
        "v4-8",
        path=minimal_path,
    )
    assert "--gin.MODEL_DIR='/tmp/ckpt'" in launched_words(flag_value(ssh, "--command"))
    result = run_script(
        "launch.sh",
        "--dry-run",
        *TPU,
        "--gin_file",
        V4_GIN,
        "--model_dir",
        "/tmp/ckpt",
        "--accelerator_type",
        "v4-512",
        path=minimal_path,
    )
    assert result.returncode != 0 and "gs://" in result.stderr


def test_logs_modes(minimal_path):
    [tail] = dry_run("logs.sh", *TPU, "--lines", "7", "--run_name", "exp1", path=minimal_path)
    assert "--worker=all" in tail
    assert 'tail -n 7 "$HOME"/alexatm-logs/exp1.log' in flag_value(tail, "--command")
    [follow] = dry_run("logs.sh", *TPU, "--follow", "--worker", "3", path=minimal_path)
    assert "--worker=3" in follow and "tail -n 40 -F" in flag_value(follow, "--command")
    mkdir, *copies = dry_run(
        "logs.sh", *TPU, "--fetch_to", "out", "--accelerator_type", "v4-512", path=minimal_path
    )
    assert mkdir == ["mkdir", "-p", "out"] and len(copies) == 64
    assert copies[63][:7] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        "alexatm-v5p:alexatm-logs/alexatm.log",
        "out/worker-63.log",
    ]
    assert "--worker=63" in copies[63]


def test_stop_sends_sigterm_on_all_workers(minimal_path):
    [ssh] = dry_run("stop.sh", *TPU, "--timeout", "1200", path=minimal_path)
    assert (
        ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "alexatm-v5p"]
        and "--worker=all" in ssh
    )
    remote = flag_value(ssh, "--command")
    assert_valid_bash(remote)
    assert (
        'kill -TERM "$pid" 2>/dev/null || true' in remote
        and "-ge 1200" in remote
        and "kill -KILL" not in remote
    )
    [forced] = dry_run("stop.sh", *TPU, "--force", path=minimal_path)
    assert 'kill -KILL "$pid"' in flag_value(forced, "--command")


STUB_TRAINER = """#!/usr/bin/env bash
# A stand-in for alexatm-train: records how it was started, checkpoints on SIGTERM.
echo "$$ $(ps -o sid= -p $$ | tr -d ' ') $PWD $*" > "$HOME/trainer_started"
on_term() { echo "SIGTERM received, checkpoint saved"; exit 0; }
{mode}
echo "training"
while true; do sleep 0.05; done
"""


def install_fake_worker(home: pathlib.Path, trap: str) -> None:
    """Lays out what setup.sh leaves on a worker: code with the gin file, a venv with a trainer."""
    (home / "alexatm-jax" / "gin" / "experiments").mkdir(parents=True)
    (home / "alexatm-jax" / V5P_GIN).write_text("# experiment\n")
    trainer = home / "alexatm-venv" / "bin" / "alexatm-train"
    trainer.parent.mkdir(parents=True)
    trainer.write_text(STUB_TRAINER.replace("{mode}", trap))
    trainer.chmod(0o755)


def remote_command(script: str, *args: str, path: str) -> str:
    """The --command that SCRIPT would run on every worker (from its dry run)."""
    ssh = [argv for argv in dry_run(script, *args, path=path) if argv[4:5] == ["ssh"]][-1]
    return flag_value(ssh, "--command")


def run_on_fake_worker(command: str, home: pathlib.Path) -> subprocess.CompletedProcess:
    """Runs a remote command the way sshd would: `bash -c COMMAND` in $HOME."""
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        ["bash", "-c", command],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def wait_for_file(path: pathlib.Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_launch_logs_stop_cycle_on_a_fake_worker(tmp_path, minimal_path):
    home = tmp_path / "worker"
    install_fake_worker(home, "trap on_term TERM")
    launch = remote_command(
        "launch.sh",
        *TPU,
        "--gin_file",
        V5P_GIN,
        "--model_dir",
        "gs://b/run",
        "--gin.TRAIN_STEPS=5",
        "--startup_wait",
        "1",
        path=minimal_path,
    )
    started = run_on_fake_worker(launch, home)
    assert started.returncode == 0, started.stderr
    assert "started alexatm as pid" in started.stdout
    pid = int((home / "alexatm-logs" / "alexatm.pid").read_text())
    wait_for_file(home / "trainer_started")
    recorded_pid, session, cwd, args = (home / "trainer_started").read_text().split(" ", 3)
    try:
        assert int(recorded_pid) == pid  # the pid file names the trainer itself
        assert int(session) == pid  # setsid: the trainer leads its own session
        assert cwd == str(home / "alexatm-jax")
        assert args.split() == [
            f"--gin_file={V5P_GIN}",
            "--gin.MODEL_DIR='gs://b/run'",
            "--gin.TRAIN_STEPS=5",
        ]
        again = run_on_fake_worker(launch, home)
        assert again.returncode == 1 and "already running" in again.stderr

        tail = run_on_fake_worker(
            remote_command("logs.sh", *TPU, "--lines", "5", path=minimal_path), home
        )
        assert tail.returncode == 0
        assert any(line.endswith(": training") for line in tail.stdout.splitlines())

        stop = run_on_fake_worker(
            remote_command("stop.sh", *TPU, "--timeout", "20", path=minimal_path), home
        )
        assert stop.returncode == 0, stop.stderr
        assert "stopped after" in stop.stdout
        assert "checkpoint saved" in (home / "alexatm-logs" / "alexatm.log").read_text()
        assert not (home / "alexatm-logs" / "alexatm.pid").exists()
        again = run_on_fake_worker(remote_command("stop.sh", *TPU, path=minimal_path), home)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)


def test_stop_reports_a_trainer_that_ignores_sigterm_and_force_kills_it(tmp_path, minimal_path):
    home = tmp_path / "worker"
    install_fake_worker(home, "trap '' TERM")
    launch = remote_command(
        "launch.sh",
        *TPU,
        "--gin_file",
        V5P_GIN,
        "--model_dir",
        "gs://b/run",
        "--startup_wait",
        "1",
        path=minimal_path,
    )
    assert run_on_fake_worker(launch, home).returncode == 0
    pid = int((home / "alexatm-logs" / "alexatm.pid").read_text())
    try:
        stuck = run_on_fake_worker(
            remote_command("stop.sh", *TPU, "--timeout", "1", path=minimal_path), home
        )
        assert stuck.returncode == 1 and "still running after 1s" in stuck.stderr
        killed = run_on_fake_worker(
            remote_command("stop.sh", *TPU, "--timeout", "1", "--force", path=minimal_path), home
        )
        assert killed.returncode == 1 and "SIGKILL" in killed.stderr
        assert not (home / "alexatm-logs" / "alexatm.pid").exists()
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)


def test_launch_reports_a_trainer_that_dies_at_once(tmp_path, minimal_path):
    home = tmp_path / "worker"
    install_fake_worker(home, 'echo "bad gin binding" >&2; exit 3')
    launch = remote_command(
        "launch.sh",
        *TPU,
        "--gin_file",
        V5P_GIN,
        "--model_dir",
        "gs://b/run",
        "--startup_wait",
        "1",
        path=minimal_path,
    )
    result = run_on_fake_worker(launch, home)
    assert result.returncode == 1
    assert "exited within 1s" in result.stderr and "bad gin binding" in result.stderr


# --------------------------------------------------------------------------------------------
# GPU


def sbatch_script_text(stdout: str) -> str:
    """The generated batch script between the dry run's begin/end markers."""
    lines = stdout.splitlines()
    start = lines.index("# ---- begin sbatch script ----") + 1
    return "\n".join(lines[start : lines.index("# ---- end sbatch script ----")]) + "\n"


SLURM_STUBS = {
    "scontrol": """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || exit 9
printf 'gpu-node-001\\ngpu-node-002\\n'
""",
    # Runs the step's command once per task, as Slurm would on each node.
    "srun": """#!/usr/bin/env bash
echo "$@" > "$STUB_DIR/srun_args"
while [[ "$1" == --* ]]; do shift; done
for id in 0 1; do SLURM_PROCID=$id SLURM_NTASKS=2 "$@" > "$STUB_DIR/task$id.out" & done
wait
""",
}
RECORDING_TRAINER = """#!/usr/bin/env bash
echo "ADDR=$ALEXATM_COORDINATOR_ADDRESS N=$ALEXATM_NUM_PROCESSES ID=${ALEXATM_PROCESS_ID:-unset}"
echo "XLA_FLAGS=$XLA_FLAGS"
echo "FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION CONNECTIONS=$CUDA_DEVICE_MAX_CONNECTIONS NCCL_DEBUG=${NCCL_DEBUG:-}"
echo "PWD=$PWD"
printf 'ARG=%s\\n' "$@"
"""


def make_fake_venv(root: pathlib.Path) -> pathlib.Path:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    trainer = venv / "bin" / "alexatm-train"
    trainer.write_text(RECORDING_TRAINER)
    trainer.chmod(0o755)
    return venv


def test_slurm_script_sets_one_process_per_node(tmp_path, minimal_path):
    venv = make_fake_venv(tmp_path)
    result = run_script(
        "gpu/slurm_launch.sh",
        "--dry-run",
        "--nodes",
        "2",
        "--time",
        "2-00:00:00",
        "--partition",
        "gpu",
        "--account",
        "lm",
        "--gin_file",
        H100_GIN,
        "--model_dir",
        "gs://b/h100",
        "--venv",
        str(venv),
        "--gin.TRAIN_STEPS=10",
        "--env",
        "NCCL_DEBUG=INFO",
        "--log_dir",
        str(tmp_path / "logs"),
        path=minimal_path,
    )
    assert result.returncode == 0, result.stderr
    [submit] = [
        shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")
    ]
    assert submit == ["sbatch", str(tmp_path / "logs" / "alexatm.sbatch")]
    script = sbatch_script_text(result.stdout)
    assert_valid_bash(script)
    for directive in (
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--time=2-00:00:00",
        "--partition=gpu",
        "--account=lm",
        "--signal=TERM@300",
        "--exclusive",
    ):
        assert f"#SBATCH {directive}\n" in script

    stub_dir = tmp_path / "stubs"
    stub_dir.mkdir()
    for name, text in SLURM_STUBS.items():
        (stub_dir / name).write_text(text)
        (stub_dir / name).chmod(0o755)
    job = tmp_path / "job.sbatch"
    job.write_text(script)
    env = {
        **os.environ,
        "PATH": f"{stub_dir}:{os.environ['PATH']}",
        "STUB_DIR": str(stub_dir),
        "SLURM_JOB_NODELIST": "gpu-node-[001-002]",
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NAME": "alexatm",
        "SLURM_CPUS_ON_NODE": "96",
    }
    ran = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert "coordinator gpu-node-001:12345" in ran.stdout
    srun_args = (stub_dir / "srun_args").read_text()
    assert "--cpus-per-task=96" in srun_args and "--kill-on-bad-exit=1" in srun_args
    assert f"--output={tmp_path / 'logs'}/alexatm-42-node%n.log" in srun_args
    for task in (0, 1):
        out = (stub_dir / f"task{task}.out").read_text().splitlines()
        assert out[0] == f"ADDR=gpu-node-001:12345 N=2 ID={task}"
        assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out[1]
        assert out[2] == "FRACTION=0.90 CONNECTIONS=1 NCCL_DEBUG=INFO"
        assert out[3] == f"PWD={REPO_ROOT}"
        assert out[4:] == [
            f"ARG=--gin_file={H100_GIN}",
            "ARG=--gin.MODEL_DIR='gs://b/h100'",
            "ARG=--gin.TRAIN_STEPS=10",
        ]


def test_single_node_execs_one_process_without_coordinator(tmp_path, minimal_path):
    venv = make_fake_venv(tmp_path)
    args = [
        "--gin_file",
        H100_GIN,
        "--model_dir",
        str(tmp_path / "ckpt"),
        "--venv",
        str(venv),
        "--gin.MESH_FSDP=8",
        "--xla_flags=--xla_gpu_enable_command_buffer=",
        "--mem_fraction",
        "0.8",
    ]
    cd, command = dry_run("gpu/single_node.sh", *args, path=minimal_path)
    assert cd == ["cd", str(REPO_ROOT)]
    assert command[:7] == [
        "env",
        "-u",
        "ALEXATM_COORDINATOR_ADDRESS",
        "-u",
        "ALEXATM_NUM_PROCESSES",
        "-u",
        "ALEXATM_PROCESS_ID",
    ]
    assert flag_value(command, "XLA_FLAGS").endswith(" --xla_gpu_enable_command_buffer=")
    # For real (the stub trainer prints what it got), with coordinator variables in the caller's env.
    result = run_script(
        "gpu/single_node.sh",
        *args,
        path=os.environ["PATH"],
        env={"ALEXATM_NUM_PROCESSES": "4", "ALEXATM_PROCESS_ID": "3"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "ADDR= N= ID=unset"
    assert out[2].startswith("FRACTION=0.8 CONNECTIONS=1")
    assert out[4:] == [
        f"ARG=--gin_file={H100_GIN}",
        f"ARG=--gin.MODEL_DIR='{tmp_path / 'ckpt'}'",
        "ARG=--gin.MESH_FSDP=8",
    ]


def test_gpu_xla_flags_exist_in_the_installed_jaxlib(minimal_path):
    """XLA aborts at start-up on an unknown flag in XLA_FLAGS, on every backend."""
    _, command = dry_run(
        "gpu/single_node.sh", "--gin_file", H100_GIN, "--model_dir", "/c", path=minimal_path
    )
    xla_flags = flag_value(command, "XLA_FLAGS")
    assert xla_flags.count("--xla_gpu_") == 11
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(2).sum())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "2.0"


# --------------------------------------------------------------------------------------------
# Real gcloud argument parsing, shellcheck


def printed_gcloud_commands(path: str, tmp_path: pathlib.Path) -> list[list[str]]:
    """One of each distinct gcloud command shape the TPU scripts print (every optional flag)."""
    runs = [
        (
            "create.sh",
            *TPU,
            "--project",
            "p",
            "--accelerator_type",
            "v5p-256",
            "--queued",
            "--spot",
            "--valid_until_duration",
            "6h",
            "--network",
            "n",
            "--subnetwork",
            "s",
        ),
        (
            "create.sh",
            *TPU,
            "--project",
            "p",
            "--accelerator_type",
            "v4-512",
            "--queued",
            "--reserved",
        ),
        (
            "create.sh",
            *TPU,
            "--project",
            "p",
            "--accelerator_type",
            "v4-8",
            "--preemptible",
            "--network",
            "n",
            "--subnetwork",
            "s",
        ),
        ("create.sh", *TPU, "--project", "p", "--accelerator_type", "v5litepod-16", "--reserved"),
        ("setup.sh", *TPU, "--project", "p", "--source_dir", str(REPO_ROOT)),  # tar, scp to, ssh
        ("launch.sh", *TPU, "--project", "p", "--gin_file", V5P_GIN, "--model_dir", "gs://b/r"),
        ("logs.sh", *TPU, "--fetch_to", str(tmp_path), "--num_workers", "1"),  # scp from
        ("delete.sh", *TPU, "--async"),
        ("delete.sh", *TPU, "--queued"),
    ]
    commands = []
    for script, *args in runs:
        commands += [
            argv
            for argv in dry_run(script, *args, path=path)
            if argv[0] == "gcloud" and not (script == "launch.sh" and "ssh" in argv)
        ]
    return commands


# Runs in the Cloud SDK's own Python: loads gcloud's CLI once and executes each command with it
# (one gcloud start-up instead of ten). Markers on stderr separate the commands' error messages.
GCLOUD_PARSE_PROGRAM = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/lib", sys.argv[1] + "/lib/third_party"]
from googlecloudsdk import gcloud_main
cli = gcloud_main.CreateCLI([])
for index, argv in enumerate(json.load(sys.stdin)):
    print(f"=== command {index}", file=sys.stderr, flush=True)
    try:
        cli.Execute(argv[1:])
        code = 0
    except SystemExit as stop:
        code = stop.code
    sys.stderr.flush()
    print(f"=== exit {code}", file=sys.stderr, flush=True)
"""


def test_gcloud_parses_every_printed_command(tmp_path, minimal_path):
    gcloud, unshare = shutil.which("gcloud"), shutil.which("unshare")
    if gcloud is None or unshare is None:
        pytest.skip("needs the Google Cloud SDK and unshare (for a network namespace)")
    if subprocess.run([unshare, "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (not root?)")
    sdk_root = pathlib.Path(gcloud).resolve().parents[1]
    bundled_python = sdk_root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = str(bundled_python) if bundled_python.exists() else sys.executable
    home = tmp_path / "home"
    home.mkdir()
    # No credentials and no network: gcloud parses each command, then stops for lack of an account.
    env = {
        **os.environ,
        "HOME": str(home),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_PROJECT": "default-project",
    }
    commands = printed_gcloud_commands(minimal_path, tmp_path)
    assert len(commands) == 10
    result = subprocess.run(
        [unshare, "--net", python, "-c", GCLOUD_PARSE_PROGRAM, str(sdk_root)],
        input=json.dumps(commands),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = result.stderr.split("=== command ")[1:]
    assert len(reports) == len(commands), result.stderr[-3000:]
    for argv, report in zip(commands, reports):
        assert "unrecognized arguments" not in report, (argv, report)
        assert "active account" in report and report.rstrip().endswith("=== exit 1"), (argv, report)


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    scripts = sorted(str(p) for p in SCRIPTS_DIR.rglob("*.sh"))
    result = subprocess.run(
        [shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, textwrap.shorten(result.stdout, 3000)
