"""`alexatm-convert`: HuggingFace-format AlexaTM <-> alexatm-jax model checkpoint.

    alexatm-convert hf-to-jax --hf_dir DIR --out CKPT [--scan_layers] [--dtype float32|bfloat16]
    alexatm-convert jax-to-hf --checkpoint CKPT --out DIR [--dtype ...] [--max_shard_size 5GB]

Exit codes (alexatm_jax.cli.errors): 2 when the arguments are refused before anything is read
(no config.json, not a model checkpoint, --out taken); 1 when the conversion fails (a truncated
or damaged weight file or config.json, a checkpoint that fails its digests, disk full), with one
line naming the file; --out is then left as it was.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command

DTYPES = ("float32", "bfloat16")
PROG = "alexatm-convert"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the two conversion directions as subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert between HuggingFace-format AlexaTM directories and alexatm-jax "
        "model checkpoints, streaming tensor by tensor.",
    )
    add_log_level_argument(parser)
    sub = parser.add_subparsers(dest="direction", required=True)

    to_jax = sub.add_parser("hf-to-jax", help="HuggingFace directory -> model checkpoint")
    to_jax.add_argument(
        "--hf_dir",
        required=True,
        help="directory with config.json and model.safetensors / "
        "pytorch_model.bin (sharded index files accepted)",
    )
    to_jax.add_argument("--out", required=True, help="model checkpoint directory to create")
    to_jax.add_argument(
        "--scan_layers",
        action="store_true",
        help="store layers stacked (scanned layout) instead of layers_0, ...",
    )
    to_jax.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="parameter dtype of the checkpoint (default: the source's)",
    )
    to_jax.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    to_hf = sub.add_parser("jax-to-hf", help="model checkpoint -> HuggingFace directory")
    to_hf.add_argument("--checkpoint", required=True, help="model checkpoint directory")
    to_hf.add_argument("--out", required=True, help="HuggingFace directory to create")
    to_hf.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="dtype of the written tensors (default: the checkpoint's)",
    )
    to_hf.add_argument(
        "--max_shard_size",
        default="5GB",
        help="largest safetensors shard, e.g. 5GB (10**9 bytes), 500MB, 2GiB",
    )
    to_hf.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from alexatm_jax.checkpoints.atomic_dir import check_output_dir
    from alexatm_jax.checkpoints.model_checkpoint import is_model_checkpoint
    from alexatm_jax.conversion.jax_to_hf import parse_size
    from alexatm_jax.gcs_access import GcsAccessError, check_paths

    try:
        check_paths(
            {"--out": args.out, "--checkpoint": getattr(args, "checkpoint", None)},
            write=("--out",),
        )
    except GcsAccessError as error:
        parser.error(str(error))

    if args.direction == "hf-to-jax":
        if not (pathlib.Path(args.hf_dir) / "config.json").is_file():
            parser.error(
                f"--hf_dir {args.hf_dir} has no config.json: point it at a HuggingFace "
                "AlexaTM directory"
            )
    else:
        if not is_model_checkpoint(args.checkpoint):
            parser.error(
                f"--checkpoint {args.checkpoint} is not a model checkpoint (no "
                "alexatm_checkpoint.json): create one with `alexatm-convert hf-to-jax`"
            )
        try:
            if parse_size(args.max_shard_size) <= 0:
                parser.error("--max_shard_size must be positive")
        except ValueError as error:
            parser.error(f"--max_shard_size: {error}")
    try:
        check_output_dir(args.out, args.overwrite)
    except FileExistsError as error:
        parser.error(f"--out: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one conversion; prints where the result went. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    _validate(args, parser)
    return run_command(PROG, lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    if args.direction == "hf-to-jax":
        from alexatm_jax.conversion.hf_to_jax import convert_hf_to_checkpoint

        out = convert_hf_to_checkpoint(
            args.hf_dir,
            args.out,
            scan_layers=args.scan_layers,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
        print(f"wrote model checkpoint {out} (load it with alexatm_jax.load({str(out)!r}))")
    else:
        from alexatm_jax.conversion.jax_to_hf import export_checkpoint_to_hf

        out = export_checkpoint_to_hf(
            args.checkpoint,
            args.out,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
        print(
            f"wrote HuggingFace directory {out} (load it with "
            f"AlexaTMSeq2SeqForConditionalGeneration.from_pretrained({str(out)!r}))"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
