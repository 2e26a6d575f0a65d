"""`alexatm-train`: run a gin-configured training job (see gin/experiments/ and docs/training.md).

    alexatm-train --gin_file=gin/experiments/smoke_cpu.gin --gin.TRAIN_STEPS=20 \\
        [--model_dir DIR] [--num_cpu_devices 8]

Gin files are layered in order (later files and then --gin.KEY=VALUE bindings override earlier
ones; values use gin syntax, so strings need quotes: --gin.MODEL_DIR="'/tmp/run'"). The job
resumes from MODEL_DIR's latest checkpoint when there is one. SIGTERM/SIGINT save a checkpoint
and exit 0. Exit codes (alexatm_jax.cli.errors): 0 done or stopped cleanly, 1 training failed
(I/O, disk full, no readable checkpoint, non-finite steps past the limits, another process of
a multi-process job lost or never joined: alexatm_jax.multiprocess), 2 refused before
MODEL_DIR was touched (bad arguments, gin configuration, MODEL_DIR or DATA_DIR unusable, another
architecture in MODEL_DIR).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import threading
from collections.abc import Sequence

from alexatm_jax.cli.errors import (
    UsageError,
    add_log_level_argument,
    configure_logging,
    run_command,
)
from alexatm_jax.cli.gin_flags import gin_bindings
from alexatm_jax.multiprocess import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DEFAULT_INITIALIZATION_TIMEOUT_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    JobTimeouts,
    join,
    leave,
)
from alexatm_jax.peer_watch import PeerWatch
from alexatm_jax.storage import absolute

PROG = "alexatm-train"

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (gin bindings `--gin.KEY=VALUE` are taken from the leftovers)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train an AlexaTM-style encoder-decoder as configured by gin files. Extra "
        "arguments --gin.KEY=VALUE are gin bindings applied after the files, e.g. "
        "--gin.TRAIN_STEPS=20 --gin.MESH_FSDP=2 --gin.train.log_every=1.",
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin file (repeatable; searched as given, in the current directory, "
        "the repository root and gin/), e.g. "
        "gin/experiments/smoke_cpu.gin",
    )
    parser.add_argument(
        "--gin_search_path",
        action="append",
        default=[],
        help="extra directory to search for gin files and their includes",
    )
    parser.add_argument(
        "--model_dir",
        default=None,
        help="where checkpoints, metrics and configs go: a local path or a URL "
        "such as gs://bucket/run (same as "
        "--gin.MODEL_DIR=\"'DIR'\"; this flag wins)",
    )
    parser.add_argument(
        "--num_cpu_devices",
        type=int,
        default=_env_int(NUM_CPU_DEVICES_ENV),
        help=f"emulate N CPU devices (env {NUM_CPU_DEVICES_ENV}); for testing meshes on a laptop",
    )
    parser.add_argument(
        "--coordinator_address",
        default=os.environ.get(COORDINATOR_ENV),
        help=f"host:port of process 0 for multi-process runs (env "
        f"{COORDINATOR_ENV}); on Cloud TPU VMs processes find each other "
        "automatically",
    )
    parser.add_argument(
        "--num_processes",
        type=int,
        default=_env_int(NUM_PROCESSES_ENV),
        help=f"number of processes of a multi-process run (env {NUM_PROCESSES_ENV})",
    )
    parser.add_argument(
        "--process_id",
        type=int,
        default=_env_int(PROCESS_ID_ENV),
        help=f"this process's index, 0..num_processes-1 (env {PROCESS_ID_ENV})",
    )
    for flag, (env, default, meaning) in TIMEOUT_FLAGS.items():
        parser.add_argument(
            f"--{flag}",
            type=int,
            default=_env_int(env, default),
            help=f"multi-process runs: {meaning}, in seconds (env {env}; default {default})",
        )
    add_log_level_argument(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and gin bindings; exits with a usage error naming what was wrong."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=20")
    if not args.gin_file:
        parser.error("give at least one --gin_file, e.g. --gin_file=gin/experiments/smoke_cpu.gin")
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
    if args.model_dir is not None:
        bindings.append(f"MODEL_DIR = {absolute(args.model_dir)!r}")
    return args, bindings


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


def initialize_jax(args: argparse.Namespace) -> PeerWatch | None:
    """Device emulation and multi-process set-up; must run before any other JAX call. Returns
    the watch over the other processes of a multi-process run (None for one process)."""
    import jax

    if args.num_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    if args.coordinator_address is None and not on_cloud_tpu_vm():
        return None
    return join(PROG, args.coordinator_address, args.num_processes, args.process_id, timeouts(args))


def _register_data_configurables() -> None:
    """Import `tasks` (SeqIO registries, their gin configurables) before gin is parsed.

    Without TensorFlow/SeqIO installed only `train.data_source = 'synthetic'` runs work.
    """
    try:
        import tasks  # noqa: F401
    except ImportError as error:
        logging.warning(
            "the SeqIO data pipeline is unavailable (%s); only train.data_source='synthetic' works",
            error,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-train`; returns the process exit code."""
    args, bindings = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    configure_logging(args.log_level)
    watch: PeerWatch | None = None

    def body() -> int:
        nonlocal watch
        watch = initialize_jax(args)
        try:
            return _train(args, bindings)
        except Exception as error:
            if watch is not None:
                watch.blame(error)  # a lost peer is named rather than the broken collective
            raise

    code = run_command(PROG, body)
    return _without_hanging(code if watch is None else leave(watch, code))


def _without_hanging(code: int) -> int:
    """`code`, or after a failure with non-daemon threads left, the end of the process at once.

    The threads of an Orbax background save that failed (e.g. a bucket refusing the writes) wait
    up to 300 s each for signals that never come, and Python waits for them at exit; the error
    has been reported and the previous checkpoints are intact, so nothing is lost."""
    left = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    if code == 0 or not left:
        return code
    logging.getLogger(PROG).debug("exiting without waiting for threads %s", [t.name for t in left])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train(args: argparse.Namespace, bindings: list[str]) -> int:
    _register_data_configurables()
    from alexatm_jax import gin_registry
    from alexatm_jax.training.checkpointing import IncompatibleCheckpointError
    from alexatm_jax.training.model_dir import ArchitectureMismatchError
    from alexatm_jax.training.trainer import InvalidTrainArguments, train

    try:
        gin_registry.parse_gin(args.gin_file, bindings, args.gin_search_path)
        config = gin_registry.run_config_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        raise UsageError(f"gin configuration: {error}") from error
    try:
        result = train(config)
    except (
        ArchitectureMismatchError,
        IncompatibleCheckpointError,
        InvalidTrainArguments,
    ) as error:  # refused before MODEL_DIR was touched
        raise UsageError(str(error)) from error
    print(
        f"{PROG}: finished at step {result.final_step}"
        + (f" (stopped by {result.stopped_by_signal})" if result.stopped_by_signal else "")
        + (f"; {result.skipped_steps} non-finite step(s) skipped" if result.skipped_steps else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
