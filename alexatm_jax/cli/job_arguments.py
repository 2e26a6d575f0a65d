"""The job options every multi-process command shares (alexatm-train, alexatm-eval): emulated
CPU devices, the coordinates of a multi-process job, and the distributed runtime's timeouts.

Every flag has an environment variable, so a launcher can set them once for all processes. On
Cloud TPU VMs the processes find each other without them.
"""

from __future__ import annotations

import argparse
import glob
import os

from alexatm_jax.multiprocess import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DEFAULT_INITIALIZATION_TIMEOUT_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    JobTimeouts,
    join,
)
from alexatm_jax.peer_watch import PeerWatch

NUM_CPU_DEVICES_ENV = "ALEXATM_NUM_CPU_DEVICES"
COORDINATOR_ENV = "ALEXATM_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "ALEXATM_NUM_PROCESSES"
PROCESS_ID_ENV = "ALEXATM_PROCESS_ID"
TIMEOUT_FLAGS = {  # flag -> (environment variable, default in seconds)
    "initialization_timeout_s": (
        "ALEXATM_INITIALIZATION_TIMEOUT_S",
        DEFAULT_INITIALIZATION_TIMEOUT_S,
        "how long each process waits for all processes to join before failing (exit 1)",
    ),
    "heartbeat_timeout_s": (
        "ALEXATM_HEARTBEAT_TIMEOUT_S",
        DEFAULT_HEARTBEAT_TIMEOUT_S,
        "a process silent for this long counts as dead: the others exit 1 within about this long",
    ),
    "shutdown_timeout_s": (
        "ALEXATM_SHUTDOWN_TIMEOUT_S",
        DEFAULT_SHUTDOWN_TIMEOUT_S,
        "how long an ending process waits at the shutdown barrier for the others",
    ),
}
GOOGLE_PCI_VENDOR = "0x1ae0"


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """--num_cpu_devices, --coordinator_address, --num_processes, --process_id, the timeouts."""
    group = parser.add_argument_group("devices and multi-process jobs")
    group.add_argument(
        "--num_cpu_devices",
        type=int,
        default=_env_int(NUM_CPU_DEVICES_ENV),
        help=f"emulate N CPU devices (env {NUM_CPU_DEVICES_ENV}); for testing meshes on a laptop",
    )
    group.add_argument(
        "--coordinator_address",
        default=os.environ.get(COORDINATOR_ENV),
        help=f"host:port of process 0 for multi-process runs (env "
        f"{COORDINATOR_ENV}); on Cloud TPU VMs processes find each other "
        "automatically",
    )
    group.add_argument(
        "--num_processes",
        type=int,
        default=_env_int(NUM_PROCESSES_ENV),
        help=f"number of processes of a multi-process run (env {NUM_PROCESSES_ENV})",
    )
    group.add_argument(
        "--process_id",
        type=int,
        default=_env_int(PROCESS_ID_ENV),
        help=f"this process's index, 0..num_processes-1 (env {PROCESS_ID_ENV})",
    )
    for flag, (env, default, meaning) in TIMEOUT_FLAGS.items():
        group.add_argument(
            f"--{flag}",
            type=int,
            default=_env_int(env, default),
            help=f"multi-process runs: {meaning}, in seconds (env {env}; default {default})",
        )


def check_job_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (parser.error) on job options that do not go together."""
    if args.num_cpu_devices is not None and args.num_cpu_devices < 1:
        parser.error(f"--num_cpu_devices must be >= 1, got {args.num_cpu_devices}")
    multi = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in multi) and any(v is None for v in multi):
        parser.error(
            "multi-process runs need all of --coordinator_address, --num_processes and "
            f"--process_id (or {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV})"
        )
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process_id must be in [0, {args.num_processes}), got {args.process_id}")
    problem = timeouts(args).problem()
    if problem:
        parser.error(problem)


def on_cloud_tpu_vm() -> bool:
    """True when a Google TPU PCI device is present (a Cloud TPU VM), checked without JAX."""
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def timeouts(args: argparse.Namespace) -> JobTimeouts:
    """The distributed runtime's timeouts given by the flags (or their variables)."""
    return JobTimeouts(
        initialization_s=args.initialization_timeout_s,
        heartbeat_s=args.heartbeat_timeout_s,
        shutdown_s=args.shutdown_timeout_s,
    )


def initialize_jax(prog: str, args: argparse.Namespace) -> PeerWatch | None:
    """Device emulation and multi-process set-up; must run before any other JAX call. Returns
    the watch over the other processes of a multi-process run (None for one process); `prog`
    names the command in the one line a lost process makes the others print."""
    import jax

    if args.num_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    if args.coordinator_address is None and not on_cloud_tpu_vm():
        return None
    return join(prog, args.coordinator_address, args.num_processes, args.process_id, timeouts(args))
