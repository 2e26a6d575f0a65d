"""`alexatm-vocab`: train a SentencePiece vocabulary for pretraining, or show a model's special ids.

alexatm-vocab train --data_dir D --vocab_size N --out PATH.model [--num_reserved_tags K]
alexatm-vocab train --demo      (the demo vocabulary on data/sample, into artifacts/vocab/)
alexatm-vocab info PATH.model
"""

from __future__ import annotations

import argparse
import os
import sys

from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexatm-vocab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a unigram model (pad=0 eos=1 unk=2, [CLM], [DOC], tags, byte fallback)",
    )
    train.add_argument(
        "--demo",
        action="store_true",
        help="train (or reuse) the demo vocabulary on data/sample, which the tasks use when no "
        "other is configured (its corpus, size and settings are fixed)",
    )
    train.add_argument("--data_dir", help="corpus: DATA_DIR/<lang>/*.{txt,jsonl}[.gz]")
    train.add_argument("--vocab_size", type=int, help="total pieces, specials included")
    train.add_argument("--out", help="output model path, ending in .model")
    train.add_argument(
        "--num_reserved_tags",
        type=int,
        default=1000,
        help="reserved tag pieces [TAG_0].. for downstream use (default 1000)",
    )
    train.add_argument(
        "--max_sentences_per_language",
        type=int,
        default=2_000_000,
        help="cap on lines read per language, so one language cannot dominate (default 2M)",
    )
    train.add_argument(
        "--character_coverage",
        type=float,
        default=0.9995,
        help="share of characters covered by pieces; the rest use byte fallback (default 0.9995)",
    )
    info = commands.add_parser("info", help="print the special ids of a SentencePiece model")
    info.add_argument("model", help="a .model file (ours or the released 20b_tokenizer.model)")
    add_log_level_argument(parser)
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.error(message)


_TRAIN_OPTIONS = ("data_dir", "vocab_size", "out")  # required by `train`, refused with --demo


def _train_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from tasks.vocab_training import train_demo_vocabulary

    given = [f"--{name}" for name in _TRAIN_OPTIONS if getattr(args, name) is not None]
    if given:
        _fail(parser, f"--demo takes no {', '.join(given)}: its corpus and size are fixed")
    try:
        path = train_demo_vocabulary()
    except (OSError, ValueError) as e:
        sys.exit(f"alexatm-vocab: {e}")
    print(f"demo vocabulary: {path}")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from tasks import corpus_files
    from tasks.vocab_training import corpus_sentences, train_vocabulary
    from tasks.vocabularies import read_special_ids

    missing = [f"--{name}" for name in _TRAIN_OPTIONS if getattr(args, name) is None]
    if missing:
        _fail(parser, f"train needs {', '.join(missing)} (or --demo)")
    if not os.path.isdir(args.data_dir):
        _fail(parser, f"--data_dir {args.data_dir} is not a directory")
    if not args.out.endswith(".model"):
        _fail(parser, f"--out must end with .model, got {args.out}")
    if args.vocab_size < 300:
        _fail(
            parser,
            f"--vocab_size must be at least 300 (256 byte pieces + specials), "
            f"got {args.vocab_size}",
        )
    if args.num_reserved_tags < 0:
        _fail(parser, "--num_reserved_tags must be >= 0")
    if not 0.9 <= args.character_coverage <= 1.0:
        _fail(parser, "--character_coverage must be in [0.9, 1.0]")
    try:
        layout = corpus_files.corpus_layout(args.data_dir)
        path = train_vocabulary(
            corpus_sentences(args.data_dir, args.max_sentences_per_language),
            args.out,
            args.vocab_size,
            args.num_reserved_tags,
            character_coverage=args.character_coverage,
        )
    except (OSError, ValueError) as e:
        sys.exit(f"alexatm-vocab: {e}")
    ids = read_special_ids(path)
    print(f"languages: {', '.join(sorted(layout.files))}")
    print(f"wrote {path} and {path[: -len('.model')]}.vocab")
    print(
        f"pieces: {ids.vocab_size}; pad={ids.pad} eos={ids.eos} unk={ids.unk} "
        f"[CLM]={ids.clm} [DOC]={ids.doc}"
    )


def _info(args: argparse.Namespace) -> None:
    import sentencepiece as spm

    from tasks.vocabularies import read_special_ids, reserved_tag_piece

    try:
        ids = read_special_ids(args.model)
    except (OSError, ValueError) as e:
        sys.exit(f"alexatm-vocab: {e}")
    processor = spm.SentencePieceProcessor(model_file=args.model)
    tags = 0
    while processor.id_to_piece(
        processor.piece_to_id(reserved_tag_piece(tags))
    ) == reserved_tag_piece(tags):
        tags += 1
    byte_pieces = sum(processor.is_byte(i) for i in range(processor.get_piece_size()))
    print(f"model: {args.model}")
    print(
        f"pieces: {ids.vocab_size}; pad={ids.pad} eos={ids.eos} unk={ids.unk} "
        f"bos={processor.bos_id()} [CLM]={ids.clm} [DOC]={ids.doc}"
    )
    print(f"reserved tags: {tags}; byte-fallback pieces: {byte_pieces}")
    if ids.pad != 0:
        print(
            "note: pad is not 0; SeqIO feature converters pad with 0 (see docs/data.md#vocabulary)"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `alexatm-vocab`; returns the exit status (alexatm_jax.cli.errors: 2 for bad
    arguments, 1 with one line for a failure, --log_level DEBUG for its traceback)."""
    return run_command("alexatm-vocab", lambda: _main(argv) or 0)


def _main(argv: list[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "train" and args.demo:
        _train_demo(args, parser)
    elif args.command == "train":
        _train(args, parser)
    else:
        _info(args)


if __name__ == "__main__":
    sys.exit(main())
