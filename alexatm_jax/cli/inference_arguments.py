"""Command-line options shared by alexatm-generate, alexatm-score and alexatm-eval."""

from __future__ import annotations

import argparse
import sys

from alexatm_jax.decoding.options import LENGTH_PENALTY_KINDS, DecodeOptions
from alexatm_jax.decoding.text import TextModel
from alexatm_jax.gcs_access import GcsAccessError, check_paths
from alexatm_jax.storage import as_path

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --tokenizer, --batch_size, dtypes and the mesh options."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        required=True,
        help="model checkpoint directory (from alexatm-convert or training); local or a URL "
        "such as gs://bucket/run",
    )
    group.add_argument(
        "--tokenizer", help="SentencePiece .model to use instead of the checkpoint's tokenizer/ one"
    )
    group.add_argument("--batch_size", type=int, default=8, help="rows per compiled call")
    group.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: the checkpoint's)")
    group.add_argument(
        "--param_dtype",
        choices=DTYPES,
        help="parameter dtype after loading (default: the checkpoint's)",
    )
    mesh = parser.add_argument_group("sharding (used when there are several devices)")
    mesh.add_argument("--fsdp", type=int, default=1, help="mesh 'fsdp' axis size")
    mesh.add_argument("--tensor", type=int, default=1, help="mesh 'tensor' axis size")
    mesh.add_argument(
        "--rules",
        default=None,
        help="logical-axis rule set (default: fsdp_tensor if --tensor > 1, else fsdp)",
    )


def add_decoding_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Search, sampling, length penalty and banned-word options."""
    group = parser.add_argument_group("decoding")
    group.add_argument(
        "--max_new_tokens",
        type=int,
        default=max_new_tokens,
        help="decoder steps after the start token (EOS included)",
    )
    group.add_argument("--beams", type=int, default=1, help="beam size (1 = greedy/sampling)")
    group.add_argument(
        "--length_penalty",
        type=float,
        default=1.0,
        help="beam search length penalty alpha (0 = total log-probability)",
    )
    group.add_argument(
        "--length_penalty_kind",
        choices=LENGTH_PENALTY_KINDS,
        default="power",
        help="power: len**alpha; gnmt: ((5+len)/6)**alpha",
    )
    group.add_argument("--sample", action="store_true", help="sample instead of greedy search")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_k", type=int, default=0, help="0 = off")
    group.add_argument("--top_p", type=float, default=1.0, help="1.0 = off")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")
    group.add_argument(
        "--bad_words",
        nargs="*",
        default=[],
        metavar="TEXT",
        help="strings never to generate (each tokenised to a piece sequence)",
    )


def fail(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit with status 2 and `message` (argparse style)."""
    parser.error(message)


def check_storage(
    parser: argparse.ArgumentParser, inputs: dict[str, str | None], outputs: dict[str, str | None]
) -> None:
    """Exit 2 (naming the bucket and the fix) when a gs:// input ({option: path}) cannot be read
    or a gs:// output cannot be written: no credentials, no bucket, no permission."""
    try:
        check_paths({**inputs, **outputs}, write=tuple(outputs))
    except GcsAccessError as error:
        fail(parser, str(error))


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validates the model options up front; exits naming the problem and its fix."""
    output = getattr(args, "output", None)
    check_storage(
        parser,
        {"--checkpoint": args.checkpoint, "--tokenizer": args.tokenizer},
        {"--output": output} if output else {},
    )
    if not as_path(args.checkpoint).is_dir():
        fail(parser, f"--checkpoint {args.checkpoint} is not a directory")
    if args.tokenizer and not as_path(args.tokenizer).is_file():
        fail(parser, f"--tokenizer {args.tokenizer} does not exist")
    if args.batch_size < 1:
        fail(parser, f"--batch_size must be >= 1, got {args.batch_size}")
    if args.fsdp < 1 or args.tensor < 1:
        fail(parser, "--fsdp and --tensor must be >= 1")
    if args.rules is not None:
        from alexatm_jax.partitioning import RULE_SETS

        if args.rules not in RULE_SETS:
            fail(parser, f"--rules {args.rules!r} is unknown; choose one of {sorted(RULE_SETS)}")


def decode_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, text_model: TextModel | None = None
) -> DecodeOptions:
    """DecodeOptions from the decoding arguments (bad words need the model's tokenizer)."""
    bad_words = tuple(text_model.tokenizer.ids_of(args.bad_words)) if text_model else ()
    try:
        return DecodeOptions(
            max_new_tokens=args.max_new_tokens,
            num_beams=args.beams,
            length_penalty=args.length_penalty,
            length_penalty_kind=args.length_penalty_kind,
            sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            bad_words=bad_words,
        )
    except ValueError as e:
        fail(parser, str(e))
        raise


def partitioner_for(args: argparse.Namespace):
    """A Partitioner when there are several devices or a sharded mesh was asked for, else None."""
    import jax

    if jax.device_count() == 1 and args.fsdp == 1 and args.tensor == 1:
        return None
    from alexatm_jax.partitioning import MeshConfig, Partitioner

    rules = args.rules or ("fsdp_tensor" if args.tensor > 1 else "fsdp")
    return Partitioner(MeshConfig(data=-1, fsdp=args.fsdp, tensor=args.tensor), rules)


def load_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TextModel:
    """The TextModel for the model arguments; load errors exit with their message."""
    from alexatm_jax.checkpoints.digests import DigestMismatchError
    from alexatm_jax.decoding.loading import load_text_model

    overrides = {k: getattr(args, k) for k in ("dtype", "param_dtype") if getattr(args, k)}
    try:
        return load_text_model(
            args.checkpoint,
            tokenizer_path=args.tokenizer,
            partitioner=partitioner_for(args),
            batch_size=args.batch_size,
            show_progress=True,
            **overrides,
        )
    except DigestMismatchError as e:  # corrupt data, not a usage error: exit 1, one line
        print(f"{parser.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as e:
        fail(parser, str(e))
        raise


def note(message: str) -> None:
    """A status line on stderr (stdout may carry the results)."""
    print(message, file=sys.stderr)


def write_lines(lines: list[str], output: str | None, what: str) -> None:
    """Write one result per line to `output` (a local path or a URL such as gs://b/out.txt; saying
    where, on stderr), or to stdout when None."""
    text = "\n".join(lines) + "\n"
    if output:
        as_path(output).write_text(text, encoding="utf-8")
        note(f"wrote {len(lines)} {what} to {output}")
    else:
        sys.stdout.write(text)
