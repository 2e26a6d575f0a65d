"""alexatm-eval: few-shot / zero-shot evaluation of a checkpoint on one task (PAPER.md §5).

Data are local JSONL files `DATA_DIR/<task>/<split>.jsonl` (Flores-101:
`DATA_DIR/flores101/{dev,devtest}/<lang>.jsonl` or the official `<code>.<split>` files). See the
README for each task's fields, prompt templates and metrics. Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from alexatm_jax.cli import inference_arguments as common
from alexatm_jax.evaluation import data, harness, tfds_export
from alexatm_jax.evaluation.generation_tasks import Summarization


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of alexatm-eval."""
    parser = argparse.ArgumentParser(
        prog="alexatm-eval", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parser.add_argument("--task", required=True,
                        help="one of: " + ", ".join(harness.task_names()))
    parser.add_argument("--data_dir", required=True, help="root of the task JSONL files")
    parser.add_argument("--split", help="split to evaluate (default: the task's evaluation split)")
    parser.add_argument("--shots", type=int,
                        help="in-context examples (default: 1 for xsum/mlsum/flores, else 0)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples")
    parser.add_argument("--out", required=True, help="directory for results.json, results.md "
                                                     "and predictions.jsonl")
    parser.add_argument("--max_new_tokens", type=int, default=harness.DEFAULT_MAX_NEW_TOKENS,
                        help="generation length (the release's max_length 64 = start + 63)")
    parser.add_argument("--tfds_data_dir",
                        help="export missing JSONL splits from TFDS datasets already prepared "
                             "here (xsum, mlsum_*, SuperGLUE, squad_v2; never downloads)")
    parser.add_argument("--choice_mode", choices=harness.CHOICE_MODES, default="denoise",
                        help="choice tasks: score the full text as a denoising target, or the "
                             "continuation after a [CLM] context")
    return parser


def export_missing_splits(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          task) -> None:
    """Writes the JSONL splits `task` needs from TFDS when they are not under --data_dir yet."""
    splits = [args.split or task.split]
    if isinstance(task, Summarization) and (args.shots is None or args.shots > 0):
        splits.append("train")
    for split in splits:
        if data.split_path(args.data_dir, task.name, split).is_file():
            continue
        try:
            path = tfds_export.export_split(task.name, split, args.tfds_data_dir, args.data_dir)
        except (ValueError, FileNotFoundError) as e:
            common.fail(parser, str(e))
        common.note(f"exported TFDS {task.name} {split} to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    common.check_model_arguments(parser, args)
    try:
        task = harness.get_task(args.task)
        harness.resolve_shots(task, args.shots)
    except ValueError as e:
        common.fail(parser, str(e))
    if args.tfds_data_dir:
        export_missing_splits(parser, args, task)
    if not os.path.isdir(args.data_dir):
        common.fail(parser, f"--data_dir {args.data_dir} is not a directory")
    if args.limit is not None and args.limit < 1:
        common.fail(parser, f"--limit must be >= 1, got {args.limit}")
    if args.max_new_tokens < 1:
        common.fail(parser, f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    text_model = common.load_model(parser, args)
    try:
        result = harness.evaluate(
            task, text_model, args.data_dir, split=args.split, shots=args.shots,
            limit=args.limit, options=harness.default_options(text_model, args.max_new_tokens),
            choice_mode=args.choice_mode)
    except (ValueError, FileNotFoundError) as e:
        common.fail(parser, str(e))
    paths = harness.write_results(result, args.out,
                                  {"checkpoint": os.path.abspath(args.checkpoint)})
    for name, value in result.metrics.items():
        if not isinstance(value, str):
            common.note(f"{result.task} {result.split} {name}: {value:.4g}")
    common.note("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
