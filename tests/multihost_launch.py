"""Start the processes of one multi-process `alexatm-train` job on 127.0.0.1 (for tests).

Each process is a real `python -m alexatm_jax.cli.train` (or another module with the same
flags) joined by `jax.distributed` through a free loopback port; its stdout and stderr go to
`LOG_DIR/NAME_process_I.log`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_env(**extra: str) -> dict[str, str]:
    """The environment of a launched process: CPU only, no ALEXATM_* or XLA_FLAGS from the
    caller, unbuffered output, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALEXATM_") and k != "XLA_FLAGS"}
    env.update(
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def cached_train_env(cache_dir: str) -> dict[str, str]:
    """`train_env` with a JAX compilation cache in `cache_dir` that keeps every program (the
    launches of one test module then compile each program once)."""
    return train_env(
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


class Job:
    """The processes of one launch (`start` them, `wait` for them, read their `logs`)."""

    def __init__(self, log_dir: str, name: str, num_processes: int) -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.paths = [
            os.path.join(log_dir, f"{name}_process_{i}.log") for i in range(num_processes)
        ]
        self.processes: list[subprocess.Popen | None] = [None] * num_processes

    def start(
        self,
        process_ids: Sequence[int],
        args: Sequence[str],
        devices_per_process: int,
        env: dict[str, str],
        *,
        port: int | None = None,
        entry: Sequence[str] = ("-m", "alexatm_jax.cli.train"),
    ) -> int:
        """Start `process_ids` of the job (all of them usually) with `args` plus their
        coordinates (none for a one-process job); returns the coordinator's port."""
        port = port or free_port()
        address = f"127.0.0.1:{port}"
        for process_id in process_ids:
            command = [sys.executable, *entry, *args]
            command += ["--num_cpu_devices", str(devices_per_process)]
            process_env = dict(env)
            if len(self.paths) > 1:
                command += ["--coordinator_address", address]
                command += ["--num_processes", str(len(self.paths))]
                command += ["--process_id", str(process_id)]
                # The coordinator listens on loopback only.
                process_env["JAX_COORDINATOR_BIND_ADDRESS"] = address
            with open(self.paths[process_id], "w") as log:
                self.processes[process_id] = subprocess.Popen(
                    command, cwd=REPO, env=process_env, stdout=log, stderr=subprocess.STDOUT
                )
        return port

    def wait(self, process_id: int, timeout_s: float) -> int | None:
        """The exit code of `process_id` once it ends, or None if it still runs after
        `timeout_s` seconds."""
        try:
            return self.processes[process_id].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def wait_all(self, timeout_s: float) -> list[int | None]:
        """Every started process's exit code (None: still running at the deadline)."""
        deadline = time.monotonic() + timeout_s
        return [
            self.wait(i, max(deadline - time.monotonic(), 0.1)) if p else None
            for i, p in enumerate(self.processes)
        ]

    def kill(self) -> None:
        """SIGKILL every process still running, and reap them all."""
        for process in self.processes:
            if process and process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def logs(self) -> list[str]:
        """The output of every process so far."""
        return [open(p).read() if os.path.exists(p) else "" for p in self.paths]

    def tails(self, chars: int = 3000) -> str:
        """The end of every log, for a failure message."""
        return "\n".join(f"--- {p} ---\n{log[-chars:]}" for p, log in zip(self.paths, self.logs()))
