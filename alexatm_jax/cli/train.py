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
from alexatm_jax.cli.job_arguments import (
    add_job_arguments,
    check_job_arguments,
    initialize_jax,
)
from alexatm_jax.multiprocess import leave
from alexatm_jax.peer_watch import PeerWatch
from alexatm_jax.storage import absolute

PROG = "alexatm-train"


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
    add_job_arguments(parser)
    add_log_level_argument(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and gin bindings; exits with a usage error naming what was wrong."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=20")
    if not args.gin_file:
        parser.error("give at least one --gin_file, e.g. --gin_file=gin/experiments/smoke_cpu.gin")
    check_job_arguments(parser, args)
    if args.model_dir is not None:
        bindings.append(f"MODEL_DIR = {absolute(args.model_dir)!r}")
    return args, bindings


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
        watch = initialize_jax(PROG, args)
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
