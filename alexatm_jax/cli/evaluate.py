"""alexatm-eval: few-shot / zero-shot evaluation of a checkpoint on one task (--task) or a whole
suite of the paper's tasks (--suite), the checkpoint loaded once.

Data come from this machine only: our JSONL files `DATA_DIR/<task>/<split>.jsonl`, HuggingFace
datasets under DATA_DIR (save_to_disk, parquet, arrow) or in the local datasets cache, and TFDS
datasets already prepared (--tfds_data_dir). See docs/inference_and_evaluation.md for each task's
data, prompt and metrics. Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from alexatm_jax.cli import inference_arguments as common
from alexatm_jax.cli import job_arguments
from alexatm_jax.evaluation import data, harness, metrics, suites, tfds_export
from alexatm_jax.evaluation.generation_tasks import Summarization
from alexatm_jax.multiprocess import leave
from alexatm_jax.storage import absolute, as_path

PROG = "alexatm-eval"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of alexatm-eval."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_model_arguments(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="one of: " + ", ".join(harness.task_names()))
    which.add_argument(
        "--suite",
        choices=tuple(suites.SUITES),
        help="run every task of a suite into --out/<task>/ and summarise them "
        "(resumes: tasks with a results.json are not rerun)",
    )
    parser.add_argument("--data_dir", required=True, help="root of the task JSONL files")
    parser.add_argument("--split", help="split to evaluate (default: the task's evaluation split)")
    parser.add_argument(
        "--shots",
        type=int,
        help="in-context examples (default: 1 for xsum/mlsum/flores/wmt/e2e, else 0)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="evaluate only the first N examples (of each language for xnli/xcopa/pawsx/xwinograd)",
    )
    parser.add_argument(
        "--out", required=True, help="directory for results.json, results.md and predictions.jsonl"
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=harness.DEFAULT_MAX_NEW_TOKENS,
        help="generation length (the release's max_length 64 = start + 63)",
    )
    parser.add_argument(
        "--tfds_data_dir",
        help="export missing JSONL splits from TFDS datasets already prepared "
        "here (xsum, mlsum_*, SuperGLUE, squad_v2; never downloads)",
    )
    parser.add_argument(
        "--spbleu_model",
        help="the Flores-101 SentencePiece model for spBLEU "
        f"({metrics.FLORES_SPM_FILE}; default ${metrics.SPBLEU_MODEL_ENV}, "
        "else sacrebleu's models/ folder); without it Flores reports "
        "bleu_13a",
    )
    parser.add_argument(
        "--choice_mode",
        choices=harness.CHOICE_MODES,
        default="denoise",
        help="choice tasks: score the full text as a denoising target, or the "
        "continuation after a [CLM] context",
    )
    job_arguments.add_job_arguments(parser)
    return parser


def export_missing_splits(parser: argparse.ArgumentParser, args: argparse.Namespace, task) -> None:
    """Writes the JSONL splits `task` needs from TFDS when they are not under --data_dir yet.

    A failure exits for --task; for --suite it is noted and the task reads its other sources.
    """
    splits = [args.split or task.split]
    if isinstance(task, Summarization) and (args.shots is None or args.shots > 0):
        splits.append("train")
    if task.name.startswith("wmt") and (args.shots is None or args.shots > 0):
        splits.append("validation")
    if task.name not in tfds_export.TFDS_SOURCES:
        return
    year, _, pair = task.name.partition(":")
    for split in splits:
        if data.split_path(args.data_dir, f"{year}/{pair}" if pair else task.name, split).is_file():
            continue
        try:
            path = tfds_export.export_split(task.name, split, args.tfds_data_dir, args.data_dir)
        except (ValueError, FileNotFoundError) as e:
            if not args.suite:
                common.fail(parser, str(e))
            common.note(f"{task.name}: no TFDS export ({e})")
            return
        common.note(f"exported TFDS {task.name} {split} to {path}")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """Validates everything before the model loads; returns the tasks to run."""
    job_arguments.check_job_arguments(parser, args)
    common.check_model_arguments(parser, args)
    common.check_storage(parser, {"--data_dir": args.data_dir}, {"--out": args.out})
    try:
        names = suites.suite_tasks(args.suite) if args.suite else [args.task]
        tasks = [harness.get_task(n) for n in names]
        if args.suite and args.shots is not None:
            raise ValueError("--shots applies to --task only: suites use each task's default")
        if args.task:
            harness.resolve_shots(tasks[0], args.shots)
    except ValueError as e:
        common.fail(parser, str(e))
    if args.spbleu_model:
        if not os.path.isfile(args.spbleu_model):
            common.fail(parser, f"--spbleu_model {args.spbleu_model} does not exist")
        os.environ[metrics.SPBLEU_MODEL_ENV] = os.path.abspath(args.spbleu_model)
    if args.tfds_data_dir:
        for task in tasks:
            export_missing_splits(parser, args, task)
    if not as_path(args.data_dir).is_dir():
        common.fail(parser, f"--data_dir {args.data_dir} is not a directory")
    if args.limit is not None and args.limit < 1:
        common.fail(parser, f"--limit must be >= 1, got {args.limit}")
    if args.max_new_tokens < 1:
        common.fail(parser, f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    return tasks


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when the data turn out bad mid-run).

    In a multi-process job (--coordinator_address ..., or a Cloud TPU slice of several hosts)
    every process loads its shard of the model and computes its rows of every batch; the
    results are gathered on every process, and process 0 writes them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tasks = check_arguments(parser, args)
    watch = job_arguments.initialize_jax(PROG, args)
    try:
        code = _evaluate(parser, args, tasks)
    except Exception as error:
        if watch is not None:
            watch.blame(error)  # a lost peer is named rather than the broken collective
        raise
    return code if watch is None else leave(watch, code)


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace, tasks: list) -> int:
    """Load the model, run the task or suite, write the results (process 0)."""
    text_model = common.load_model(parser, args)
    import jax

    extra = {
        "checkpoint": absolute(args.checkpoint),
        "tokenizer_convention": text_model.tokenizer.convention,
    }
    options = harness.default_options(text_model, args.max_new_tokens)
    try:
        if args.suite:
            report = suites.run_suite(
                args.suite,
                text_model,
                args.data_dir,
                args.out,
                limit=args.limit,
                options=options,
                choice_mode=args.choice_mode,
                extra=extra,
                writer=jax.process_index() == 0,
                note=common.note,
                agree=suites.agree_across_processes,
            )
            common.note(
                f"suite {args.suite}: {len(report['tasks']) + bool(report['flores'])} "
                f"result groups, {len(report['skipped'])} tasks skipped for lack of "
                f"data; wrote {os.path.join(args.out, 'summary.md')}"
            )
            return 0
        result = harness.evaluate(
            tasks[0],
            text_model,
            args.data_dir,
            split=args.split,
            shots=args.shots,
            limit=args.limit,
            options=options,
            choice_mode=args.choice_mode,
        )
    except (ValueError, FileNotFoundError) as e:  # data.DataError included
        common.note(f"alexatm-eval: error: {e}")
        return 1
    if jax.process_index() != 0:
        return 0
    paths = harness.write_results(result, args.out, extra)
    for name, value in result.metrics.items():
        if not isinstance(value, str):
            common.note(f"{result.task} {result.split} {name}: {value:.4g}")
    common.note("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
