"""`alexatm-info`: parameter counts and memory of a gin-configured model, allocating nothing;
or `--verify`: check checkpoints against their recorded digests.

    alexatm-info --gin_file=models/alexatm_20b.gin [--gin.ModelConfig.scan_layers=True ...]
    alexatm-info --verify MODEL_DIR|MODEL_DIR/checkpoints/STEP|MODEL_CHECKPOINT

Prints parameters per top-level module, bytes of parameters and of Adam optimizer state, and
as its last line `total_params: <integer>`. Shapes come from jax.eval_shape, so even the 20B
model takes seconds. `--verify` prints one line per checkpoint (verified / unverified / CORRUPT)
and exits 1 when one is corrupt. Exit codes follow alexatm_jax.cli.errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from alexatm_jax.cli.errors import (
    UsageError,
    add_log_level_argument,
    configure_logging,
    run_command,
)
from alexatm_jax.cli.gin_flags import gin_bindings

GIB = 2**30
PROG = "alexatm-info"


def parse_args(
    argv: Sequence[str] | None,
) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    """The parser, its parsed options and the gin bindings from `--gin.KEY=VALUE` arguments."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Count the parameters of a gin-configured AlexaTM model and estimate the "
        "memory of its parameters and Adam state. Extra arguments of the form "
        "--gin.KEY=VALUE are gin bindings, e.g. --gin.ModelConfig.d_model=1024. "
        "With --verify, check checkpoints against their digests instead.",
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin file(s) binding ModelConfig, e.g. models/tiny.gin "
        "(searched in the current directory, the repo root and gin/)",
    )
    parser.add_argument(
        "--gin_search_path",
        action="append",
        default=[],
        help="extra directory to search for gin files",
    )
    parser.add_argument(
        "--verify",
        metavar="DIR",
        default=None,
        help="check the checkpoints of a training MODEL_DIR, one "
        "MODEL_DIR/checkpoints/STEP or a model checkpoint against their "
        "recorded content digests, without training or loading a model",
    )
    add_log_level_argument(parser)
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.ModelConfig.d_model=1024")
    if args.verify is None and not args.gin_file:
        parser.error("give --gin_file (e.g. --gin_file=models/tiny.gin) or --verify DIR")
    if args.verify is not None and (args.gin_file or bindings):
        parser.error("--verify takes no --gin_file or --gin.KEY=VALUE")
    return parser, args, bindings


def module_counts(shapes: dict) -> dict[str, int]:
    """Parameters per top-level module of a (nested dict) shape tree."""
    import jax

    return {
        name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(subtree))
        for name, subtree in shapes.items()
    }


def memory_lines(total: int, param_dtype: str) -> list[str]:
    """Lines giving parameter and Adam-state bytes for `total` parameters stored in param_dtype."""
    param_bytes = total * np.dtype(param_dtype).itemsize
    moments = total * 2 * 4
    lines = [
        f"parameter bytes ({param_dtype}): {param_bytes:,} ({param_bytes / GIB:.2f} GiB)",
        f"Adam moments (2 x float32): {moments:,} ({moments / GIB:.2f} GiB)",
    ]
    if np.dtype(param_dtype).itemsize < 4:
        master = total * 4
        lines.append(
            f"float32 master copy (params are {param_dtype}): {master:,} ({master / GIB:.2f} GiB)"
        )
    else:
        master = 0
        lines.append("float32 master copy: none (the float32 parameters are the master copy)")
    train = param_bytes + moments + master
    lines.append(
        f"parameters + optimizer state for training: {train:,} ({train / GIB:.2f} GiB), "
        "before gradients and activations"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report for the configured model (or the --verify verdicts); returns the exit
    status."""
    _, args, bindings = parse_args(argv)
    configure_logging(args.log_level)
    if args.verify is not None:
        return run_command(PROG, lambda: verify(args.verify))
    return run_command(PROG, lambda: report(args, bindings))


def verify(path: str) -> int:
    """Print one line per checkpoint under `path`; 1 if any is corrupt, else 0."""
    from alexatm_jax.checkpoints.verify import CORRUPT
    from alexatm_jax.checkpoints.verify import verify as verify_checkpoints
    from alexatm_jax.gcs_access import GcsAccessError, check_paths

    try:
        check_paths({"--verify": path})
        verdicts = verify_checkpoints(path)
    except (FileNotFoundError, GcsAccessError) as error:
        raise UsageError(f"--verify: {error}") from error
    for verdict in verdicts:
        print(f"{verdict.path}: {verdict.status}: {verdict.detail}")
    return 1 if any(v.status == CORRUPT for v in verdicts) else 0


def report(args: argparse.Namespace, bindings: list[str]) -> int:
    """Print the parameter and memory report of the gin-configured model."""
    from alexatm_jax import gin_registry
    from alexatm_jax.model.params import param_shapes

    try:
        files = gin_registry.parse_gin(args.gin_file, bindings, args.gin_search_path)
        config = gin_registry.model_config_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        raise UsageError(f"gin configuration: {error}") from error
    counts = module_counts(param_shapes(config))
    total = sum(counts.values())
    print(f"gin files: {', '.join(str(f) for f in files)}")
    print(
        f"model: d_model={config.d_model} layers={config.num_encoder_layers}+"
        f"{config.num_decoder_layers} heads={config.num_encoder_heads}/"
        f"{config.num_decoder_heads} ffn={config.encoder_ffn_dim}/{config.decoder_ffn_dim} "
        f"vocab={config.vocab_size} share_embeddings={config.share_embeddings} "
        f"tie_word_embeddings={config.tie_word_embeddings}"
    )
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        print(f"  {name:<{width}}  {count:>16,}  {100 * count / total:6.2f}%")
    print(f"  {'total':<{width}}  {total:>16,}  ({total / 1e9:.4f}B)")
    for line in memory_lines(total, config.param_dtype):
        print(line)
    print(f"total_params: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
