"""`alexatm-data`: prepare the pretraining corpus as tokenised shards, and describe prepared data.

  alexatm-data prepare --data_dir D --out DIR [--vocab V] [--splits train validation]
  alexatm-data prepare ... --num_workers N --worker_index I   (one worker's share of the files)
  alexatm-data prepare --finalize --out DIR                   (the manifest, after all N workers)
  alexatm-data info DIR [--format json]

DIR is local or gs://. A re-run skips finished units/splits whose inputs are unchanged and
redoes the rest. Layout: alexatm_jax/data/prepared_format.py; docs/data.md#prepared-data-alexatm-data-prepare.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from alexatm_jax.cli.errors import (
    UsageError,
    add_log_level_argument,
    configure_logging,
    run_command,
)
from alexatm_jax.data.prepared_format import START_DTYPE, TOKEN_DTYPE, read_manifest
from alexatm_jax.gcs_access import GcsAccessError, check_paths
from alexatm_jax.storage import as_path

LOCAL_MIXTURE = "alexatm_pretrain_local"  # the mixture prepare reads (tasks.LOCAL_MIXTURE)
SPLITS = ("train", "validation")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexatm-data",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare", help="tokenise every corpus unit and split into random-access parts"
    )
    prepare.add_argument("--out", required=True, help="output directory, local or gs://")
    prepare.add_argument(
        "--mixture",
        default=LOCAL_MIXTURE,
        help=f"pretraining mixture (default {LOCAL_MIXTURE}, the only one prepared from files)",
    )
    prepare.add_argument(
        "--data_dir", help="DATA_DIR/<lang>/* (default $ALEXATM_DATA_DIR, then data/sample)"
    )
    prepare.add_argument(
        "--vocab", help="SentencePiece model (default: $ALEXATM_VOCAB, then the demo vocabulary)"
    )
    prepare.add_argument("--ngrams", help="n-gram file from alexatm-decontaminate")
    prepare.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    prepare.add_argument(
        "--documents_per_part", type=int, default=100_000, help="documents per part file"
    )
    prepare.add_argument(
        "--num_workers", type=int, default=1, help="workers sharing the files (default 1)"
    )
    prepare.add_argument(
        "--worker_index", type=int, default=0, help="this worker, 0..num_workers-1"
    )
    prepare.add_argument(
        "--finalize",
        action="store_true",
        help="write the manifest from the workers' done records (no data read)",
    )
    prepare.add_argument("--no_progress", action="store_true", help="no progress bar")
    prepare.add_argument(
        "--gin_file", action="append", default=[], help="gin file(s) to parse first"
    )
    prepare.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="gin binding(s), e.g. MixtureConfig.max_document_bytes=50000",
    )
    add_log_level_argument(prepare)
    info = commands.add_parser("info", help="summarise prepared data (its manifest)")
    info.add_argument("directory", help="a prepared directory, local or gs://")
    info.add_argument("--format", choices=("text", "json"), default="text")
    add_log_level_argument(info)
    return parser


def _validate_prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.mixture != LOCAL_MIXTURE:
        parser.error(
            f"--mixture {args.mixture}: prepare reads local files ({LOCAL_MIXTURE}); export "
            f"TFDS text to DATA_DIR/<lang>/*.jsonl and prepare {LOCAL_MIXTURE}, or train "
            f"{args.mixture} through SeqIO"
        )
    if args.documents_per_part < 1:
        parser.error("--documents_per_part must be >= 1")
    if args.num_workers < 1 or not 0 <= args.worker_index < args.num_workers:
        parser.error(
            f"need --num_workers >= 1 and 0 <= --worker_index < --num_workers, got "
            f"{args.num_workers} and {args.worker_index}"
        )
    try:
        check_paths(
            {"--out": args.out, "--data_dir": args.data_dir, "--vocab": args.vocab},
            write=("--out",),
        )
    except GcsAccessError as error:
        parser.error(str(error))
    if as_path(args.out).is_file():
        parser.error(f"--out {args.out} is a file; give a directory")
    if args.data_dir and not as_path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir} is not a directory")
    for flag in ("vocab", "ngrams", "gin_file"):
        values = getattr(args, flag)
        for value in values if isinstance(values, list) else [values]:
            if value and not as_path(value).is_file():
                parser.error(f"--{flag} {value} does not exist")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `alexatm-data`; returns the exit status (alexatm_jax.cli.errors: 2 for bad
    arguments, 1 with one line for a failure, --log_level DEBUG for its traceback)."""
    return run_command("alexatm-data", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "info":
        _info(args.directory, args.format)
        return 0
    _validate_prepare(args, parser)
    _prepare(args)
    return 0


def _config(args: argparse.Namespace):
    """The MixtureConfig of the gin files/bindings and flags, its vocabulary resolved (exit 2
    when there is none)."""
    import gin
    import tasks

    if args.gin_file or args.gin_param:
        gin.parse_config_files_and_bindings(args.gin_file, args.gin_param, finalize_config=False)
    config = tasks.MixtureConfig()
    overrides = {"vocab_path": args.vocab, "ngrams_path": args.ngrams}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v})
    try:
        return dataclasses.replace(config, vocab_path=config.vocab_path or tasks.vocabulary_path())
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error


def _prepare(args: argparse.Namespace) -> None:
    from tasks import preparation

    config = _config(args)
    start = time.monotonic()
    if args.num_workers > 1 and not args.finalize:
        _prepare_worker(args, config, start)
        return
    if args.finalize:
        manifest = preparation.finalize(args.out, args.mixture, config)
    else:
        manifest = preparation.prepare(
            args.mixture,
            data_dir=args.data_dir,
            config=config,
            out=args.out,
            splits=args.splits,
            documents_per_part=args.documents_per_part,
            progress=not args.no_progress,
        )
    _print_summary(summary(manifest))
    print(f"prepared data: {args.out} in {time.monotonic() - start:.1f} s")


def _prepare_worker(args: argparse.Namespace, config, start: float) -> None:
    """One worker's share (`--num_workers N --worker_index I`): its parts and done records."""
    from tasks import preparation

    records = preparation.prepare_shard(
        args.mixture,
        data_dir=args.data_dir,
        config=config,
        out=args.out,
        splits=args.splits,
        documents_per_part=args.documents_per_part,
        worker_index=args.worker_index,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    for where, record in records.items():
        parts = record["parts"]
        print(
            f"{where}: {sum(p['documents'] for p in parts):,} documents, "
            f"{sum(p['tokens'] for p in parts):,} tokens ({len(parts)} parts)"
        )
    print(
        f"worker {args.worker_index} of {args.num_workers} done in "
        f"{time.monotonic() - start:.1f} s; once all have finished: alexatm-data prepare "
        f"--finalize --num_workers {args.num_workers} --out {args.out}"
    )


def _part_bytes(part: Mapping[str, Any]) -> int:
    return TOKEN_DTYPE.itemsize * part["tokens"] + START_DTYPE.itemsize * (part["documents"] + 1)


def summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """{"units": {unit: {split: {documents, tokens, parts, bytes}}}, "total", "counters",
    "bad_files", ...} of a manifest; bytes are those of the part files."""
    units: dict[str, dict[str, Any]] = {}
    total = {"documents": 0, "tokens": 0, "bytes": 0}
    for unit, entry in sorted(manifest["units"].items()):
        for split, info in sorted(entry["splits"].items()):
            row = {
                "documents": info["documents"],
                "tokens": info["tokens"],
                "parts": len(info["parts"]),
                "bytes": sum(_part_bytes(part) for part in info["parts"]),
            }
            units.setdefault(unit, {})[split] = row
            for key in total:
                total[key] += row[key]
    return {
        "mixture": manifest["mixture"],
        "created": manifest["created"],
        "vocabulary": manifest["vocabulary"]["path"],
        "units": units,
        "total": total,
        "counters": manifest["counters"],
        "bad_files": manifest["bad_files"],
    }


def _print_summary(summary: Mapping[str, Any]) -> None:
    print(f"{'unit':<12} {'split':<10} {'documents':>12} {'tokens':>15} {'bytes':>15} parts")
    for unit, splits in summary["units"].items():
        for split, row in splits.items():
            print(
                f"{unit:<12} {split:<10} {row['documents']:>12,} {row['tokens']:>15,} "
                f"{row['bytes']:>15,} {row['parts']:>5}"
            )
    total = summary["total"]
    print(f"{'total':<23} {total['documents']:>12,} {total['tokens']:>15,} {total['bytes']:>15,}")
    counts = {name: value for name, value in summary["counters"].items() if value}
    print("counters:", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "all zero")
    for path, why in sorted(summary["bad_files"].items()):
        print(f"damaged file skipped: {path}: {why}")


def _info(directory: str, output_format: str) -> None:
    try:
        check_paths({"DIR": directory})
    except GcsAccessError as error:
        raise UsageError(str(error)) from error
    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    result = summary(manifest)
    if output_format == "json":
        print(json.dumps(result, sort_keys=True))
        return
    print(
        f"prepared data {directory}: {result['mixture']}, created {result['created']}, "
        f"vocabulary {result['vocabulary']}"
    )
    _print_summary(result)


if __name__ == "__main__":
    sys.exit(main())
