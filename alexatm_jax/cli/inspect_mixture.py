"""`alexatm-inspect`: look at the examples a pretraining mixture produces, and measure them.

A fine-tuning task (tasks/seq2seq.py) is shown the same way once its gin binding is given, e.g.
`--gin_param "Seq2SeqTask.data='/data/my_task'" --mixture finetune`.

  alexatm-inspect --mixture alexatm_pretrain_local --data_dir data/sample -n 3
  alexatm-inspect --mixture alexatm_pretrain_local --data_dir D --stats 2000 --format json
  alexatm-inspect --mixture alexatm_pretrain_local --prepared P --stats 2000 --format json

--prepared reads the rows a training job reads from data `alexatm-data prepare` wrote to P
(train.data_source = 'prepared'), so the two paths' statistics can be set side by side.

Text mode decodes inputs and targets, marking deleted spans of the targets (ANSI colour on a
terminal, ⟦…⟧ otherwise). JSON mode prints one object per example and a final summary object;
the schema is in docs/data.md#alexatm-inspect-json-schema.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command
from alexatm_jax.gcs_access import GcsAccessError, check_paths
from alexatm_jax.storage import as_path

if TYPE_CHECKING:  # tasks imports TensorFlow and SeqIO: only once arguments are valid
    from tasks.corpus_files import CorpusLayout
    from tasks.inspection import ExampleRecord
    from tasks.pretraining import MixtureConfig
    from tasks.vocabularies import SpecialIds

_ANSI = ("\033[41;97m", "\033[0m")
_BRACKETS = ("⟦", "⟧")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexatm-inspect",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    parser.add_argument(
        "--mixture", required=True, help="mixture or task name, e.g. alexatm_pretrain_local"
    )
    parser.add_argument(
        "--data_dir",
        help="DATA_DIR of the local mixture (default $ALEXATM_DATA_DIR, then data/sample)",
    )
    parser.add_argument(
        "--prepared",
        metavar="DIR",
        help="read the examples from data prepared by `alexatm-data prepare --out DIR` instead "
        "of streaming DATA_DIR",
    )
    parser.add_argument(
        "--vocab", help="SentencePiece model (default: $ALEXATM_VOCAB, then the demo vocabulary)"
    )
    parser.add_argument("-n", type=int, default=5, help="examples to show (default 5)")
    parser.add_argument(
        "--stats", type=int, default=0, metavar="N", help="measure N examples (default: no stats)"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    parser.add_argument("--inputs_length", type=int, default=1024, help="encoder length in tokens")
    parser.add_argument("--targets_length", type=int, default=1024, help="decoder length in tokens")
    parser.add_argument(
        "--counts", help="language counts JSON (default tasks/language_counts.json)"
    )
    parser.add_argument(
        "--ngrams", help="n-gram file from alexatm-decontaminate (enables decontamination)"
    )
    parser.add_argument(
        "--gin_file", action="append", default=[], help="gin file(s) to parse first"
    )
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="gin binding(s), e.g. MixtureConfig.clm_share=0.3",
    )
    add_log_level_argument(parser)
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.n < 1:
        parser.error("-n must be >= 1")
    if args.stats < 0:
        parser.error("--stats must be >= 0")
    if min(args.inputs_length, args.targets_length) < 8:
        parser.error("--inputs_length and --targets_length must be >= 8")
    try:
        check_paths(
            {"--data_dir": args.data_dir, "--vocab": args.vocab, "--prepared": args.prepared}
        )
    except GcsAccessError as error:
        parser.error(str(error))
    for flag in ("data_dir", "prepared"):
        value = getattr(args, flag)
        if value and not as_path(value).is_dir():
            parser.error(f"--{flag} {value} is not a directory")
    for flag in ("vocab", "counts", "ngrams", "gin_file"):
        values = getattr(args, flag)
        for value in values if isinstance(values, list) else [values]:
            if value and not as_path(value).is_file():
                parser.error(f"--{flag} {value} does not exist")


def render(processor, ids: list[int], mask: list[int] | None, marks: tuple[str, str]) -> str:
    """Readable text of token ids, with runs where `mask` is 1 wrapped in `marks`."""
    out, pending_bytes, inside = [], bytearray(), False

    def flush():
        if pending_bytes:
            out.append(pending_bytes.decode("utf-8", "replace"))
            pending_bytes.clear()

    for position, token in enumerate(ids):
        marked = bool(mask[position]) if mask else False
        if marked != inside:
            flush()
            out.append(marks[0] if marked else marks[1])
            inside = marked
        if processor.is_byte(token):
            pending_bytes.append(int(processor.id_to_piece(token)[3:5], 16))
            continue
        flush()
        out.append(processor.id_to_piece(token).replace("▁", " "))
    flush()
    if inside:
        out.append(marks[1])
    return "".join(out).strip()


def _print_text(records, processor, stats: dict | None) -> None:
    marks = _ANSI if sys.stdout.isatty() else _BRACKETS
    for i, r in enumerate(records):
        print(
            f"--- example {i}: task={r.objective} language={r.language} source={r.source} "
            f"inputs={len(r.inputs)} targets={len(r.targets)} tokens"
        )
        print("inputs: ", render(processor, r.inputs, None, marks))
        print("targets:", render(processor, r.targets, r.noise_mask, marks))
    if stats:
        print("--- summary")
        print(json.dumps(stats, indent=2, ensure_ascii=False))


def _intended(mixture: str, recipe: dict[str, Any] | None = None) -> tuple[dict[str, float], float]:
    """(language -> intended share, intended CLM share) from the registered mixture's rates, or
    the prepared data's `recipe` (seq2seq fine-tuning tasks, which have neither, count for
    none)."""
    import tasks
    from tasks.pretraining import OBJECTIVES

    languages: dict[str, float] = {}
    clm = 0.0
    rates = (
        {name: task["rate"] for name, task in recipe["tasks"].items()}
        if recipe
        else tasks.mixture_rates(mixture)
    )
    total = sum(rates.values())
    for name, rate in ((n, r / total) for n, r in rates.items()):
        if not name.endswith(tuple(f"_{objective}" for objective in OBJECTIVES)):
            continue
        language, objective = name.split("_")[-2:]
        languages[language] = languages.get(language, 0.0) + rate
        clm += rate if objective == "clm" else 0.0
    return languages, clm


def main(argv: list[str] | None = None) -> int:
    """Entry point of `alexatm-inspect`; returns the exit status (alexatm_jax.cli.errors: 2 for bad
    arguments, 1 with one line for a failure, --log_level DEBUG for its traceback)."""
    return run_command("alexatm-inspect", lambda: _main(argv) or 0)


def _main(argv: list[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    _validate(args, parser)

    import gin
    import tasks  # noqa: F401  (registers the gin configurables that the bindings name)

    if args.gin_file or args.gin_param:
        gin.parse_config_files_and_bindings(args.gin_file, args.gin_param, finalize_config=False)
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    count = max(args.n, args.stats)
    examples = (
        _collect_prepared(args, lengths, count) if args.prepared else _collect(args, lengths, count)
    )
    stats = _stats(args, examples, lengths, count) if args.stats else None
    if args.format == "json":
        _print_json(examples.records, stats)
    else:
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(
            model_proto=as_path(examples.vocab_path).read_bytes()
        )
        _print_text(examples.records[: args.n], processor, stats)
    if len(examples.records) < count:
        print(
            f"note: the {args.split} split ended after {len(examples.records)} examples",
            file=sys.stderr,
        )


@dataclasses.dataclass(frozen=True)
class _Examples:
    """The first examples of a mixture and what they were read with."""

    config: MixtureConfig
    layout: CorpusLayout | None  # the local corpus found, None for a registered mixture
    vocab_path: str
    ids: SpecialIds
    records: list[ExampleRecord]
    recipe: dict[str, Any] | None = None  # the prepared data's recipe (--prepared)


def _config(args: argparse.Namespace) -> MixtureConfig:
    """The mixture settings with --vocab, --counts and --ngrams applied."""
    from tasks import pretraining

    overrides = {
        k: v
        for k, v in (
            ("vocab_path", args.vocab),
            ("counts_path", args.counts),
            ("ngrams_path", args.ngrams),
        )
        if v
    }
    return dataclasses.replace(pretraining.MixtureConfig(), **overrides)


def _collect_prepared(args: argparse.Namespace, lengths: dict[str, int], count: int) -> _Examples:
    """The examples of the first rows a training job reads from --prepared (checked against the
    registry first), until `count` examples."""
    import tasks
    from alexatm_jax.data.prepared_batches import PreparedRows
    from tasks import inspection, preparation

    config = _config(args)
    try:
        manifest, recipe = preparation.check_prepared(args.prepared, args.mixture, config)
        rows = PreparedRows(
            args.prepared,
            manifest,
            recipe,
            split=args.split,
            sequence_length=lengths,
            seed=args.seed,
        )
    except (OSError, ValueError) as e:
        sys.exit(f"alexatm-inspect: {e}")
    records: list[ExampleRecord] = []
    row = 0
    while len(records) < count:
        for ex in rows.examples(row):
            records.append(
                inspection.ExampleRecord(
                    objective=ex.objective,
                    language=ex.language,
                    source=ex.source,
                    inputs=ex.inputs.tolist(),
                    targets=ex.targets.tolist(),
                    noise_mask=ex.noise_mask.tolist(),
                    clm_document_length=ex.clm_document_length,
                    clm_split_point=ex.clm_split_point,
                )
            )
        row += 1
    vocab_path = config.vocab_path or tasks.vocabulary_path()
    return _Examples(
        config, None, vocab_path, tasks.read_special_ids(vocab_path), records[:count], recipe
    )


def _collect(args: argparse.Namespace, lengths: dict[str, int], count: int) -> _Examples:
    """Read the first `count` examples of --mixture (registering the local mixture first);
    exits with the known mixtures named when it cannot, or when there are none."""
    import seqio
    import tensorflow as tf

    import tasks
    from tasks import inspection

    try:
        config = _config(args)
        layout = None
        if args.mixture == tasks.LOCAL_MIXTURE or args.mixture.startswith("alexatm_local_"):
            layout = tasks.register_local_mixture(
                **({"data_dir": args.data_dir} if args.data_dir else {}), config=config
            )
        ds = tasks.get_dataset(
            args.mixture,
            sequence_length=lengths,
            split=args.split,
            seed=args.seed,
            data_dir=args.data_dir,
            feature_converter=False,
            config=config,
        )
        vocab_path = config.vocab_path or tasks.vocabulary_path()
        ids = tasks.read_special_ids(vocab_path)
        records = inspection.collect_examples(ds, count)
    except (OSError, ValueError, tf.errors.OpError) as e:
        registered = {n for n in seqio.MixtureRegistry.names() if n.startswith("alexatm")}
        known = sorted(registered | {tasks.LOCAL_MIXTURE})
        sys.exit(f"alexatm-inspect: {e}\n(known mixtures: {', '.join(known)})")
    if not records:
        sys.exit(f"alexatm-inspect: {args.mixture} produced no {args.split} examples")
    return _Examples(config, layout, vocab_path, ids, records)


def _stats(
    args: argparse.Namespace, examples: _Examples, lengths: dict[str, int], count: int
) -> dict[str, Any]:
    """The --stats summary: measured against the mixture's intended rates, with the pipeline
    counters, the settings used and (for the local mixture) the corpus found."""
    import tasks
    from tasks import inspection

    config, layout, ids = examples.config, examples.layout, examples.ids
    languages, clm_share = _intended(args.mixture, examples.recipe)
    stats = inspection.summarize(
        examples.records,
        clm_id=ids.clm,
        lengths=lengths,
        intended_languages=languages,
        intended_clm_share=clm_share,
        rate=config.noise_rate,
        poisson_lambda=config.poisson_lambda,
    )
    stats["requested"] = count
    stats["counters"] = tasks.pipeline_counters()
    stats["config"] = {
        "mixture": args.mixture,
        "split": args.split,
        "seed": args.seed,
        "sequence_length": lengths,
        "prepared": args.prepared,
        "vocab": examples.vocab_path,
        "special_ids": dataclasses.asdict(ids),
    }
    if layout:
        stats["corpus"] = {
            "data_dir": layout.data_dir,
            "languages": sorted(layout.files),
            "left_out": layout.missing_languages + layout.empty_dirs,
            "unknown_dirs": layout.unknown_dirs,
            "bad_files": layout.bad_files,
        }
    return stats


def _print_json(records: list[ExampleRecord], stats: dict[str, Any] | None) -> None:
    """One JSON line per example (ids, and deleted spans or the CLM split), then the summary."""
    for r in records:
        line = {
            "task": r.objective,
            "language": r.language,
            "source": r.source,
            "inputs": r.inputs,
            "targets": r.targets,
        }
        if r.objective == "denoise":
            line["deleted_spans"] = [list(span) for span in r.deleted_spans]
        else:
            line["clm_split"] = {
                "document_tokens": r.clm_document_length,
                "split_point": r.clm_split_point,
            }
        print(json.dumps(line))
    print(json.dumps({"summary": stats or {"examples": len(records)}}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
