"""alexatm-score: teacher-forced log-probabilities of targets given inputs.

Reads JSONL lines `{"input": ..., "target": ...}` and writes one JSONL line per pair with
`score_sum` (sum of the target tokens' natural-log probabilities), `score_mean` (per token) and
`num_tokens` (target tokens scored, EOS included, and BOS when the vocabulary has one).
Exit codes follow alexatm_jax.cli.errors (a malformed line is refused as FILE:LINE, status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from alexatm_jax.cli import inference_arguments as common
from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command
from alexatm_jax.evaluation.data import iter_jsonl
from alexatm_jax.storage import as_path

PROG = "alexatm-score"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of alexatm-score."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_model_arguments(parser)
    parser.add_argument("--input_file", required=True, help="JSONL with `input` and `target`")
    parser.add_argument("--output", help="write JSONL scores here (default: stdout)")
    add_log_level_argument(parser)
    return parser


def read_pairs(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, str]]:
    """(input, target) pairs of the JSONL file; exits naming a bad line."""
    try:
        pairs = [
            (record["input"], record["target"])
            for record in iter_jsonl(as_path(path), ("input", "target"))
        ]
    except (OSError, ValueError) as e:
        common.fail(parser, f"--input_file: {e}")
    if not pairs:
        common.fail(parser, f"{path} holds no pairs")
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_command(PROG, lambda: score(parser, args))


def score(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Score every pair and write the results; returns 0."""
    common.check_storage(parser, {"--input_file": args.input_file}, {})
    common.check_model_arguments(parser, args)
    pairs = read_pairs(parser, args.input_file)
    text_model = common.load_model(parser, args)
    try:
        scores = text_model.score([p[0] for p in pairs], [p[1] for p in pairs])
    except ValueError as e:
        common.fail(parser, str(e))
    lines = [
        json.dumps(
            {
                "input": i,
                "target": t,
                "score_sum": s.score_sum,
                "score_mean": s.score_mean,
                "num_tokens": s.num_tokens,
            },
            ensure_ascii=False,
        )
        for (i, t), s in zip(pairs, scores)
    ]
    common.write_lines(lines, args.output, "scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
