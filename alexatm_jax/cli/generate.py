"""alexatm-generate: continue (CLM mode) or denoise prompts with a checkpoint.

Prompts come one per line from --input_file or stdin (a `.jsonl` file takes each line's
`input` field). Newlines cannot be tokenised: write `<br>` inside a prompt instead. There is one
output per input line, in order, blank lines included (a blank prompt is generated from like any
other); a `.jsonl` line that is blank or not an object with a string `input` is refused with its
line number. Exit codes follow alexatm_jax.cli.errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from alexatm_jax.cli import inference_arguments as common
from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command
from alexatm_jax.storage import as_path
from alexatm_jax.tokenization import clm_prompt

PROG = "alexatm-generate"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of alexatm-generate."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_model_arguments(parser)
    parser.add_argument(
        "--mode",
        choices=("clm", "denoise"),
        default="clm",
        help="clm: prepend '[CLM] ' (continue the text); denoise: rewrite it",
    )
    parser.add_argument("--input_file", help="prompts, one per line (default: stdin)")
    parser.add_argument("--output", help="write results here (default: stdout)")
    parser.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: one output per line; jsonl: {input, output, output_ids, score} per line",
    )
    parser.add_argument(
        "--stop",
        nargs="*",
        default=[],
        metavar="STR",
        help="cut each output before the first of these strings",
    )
    common.add_decoding_arguments(parser, max_new_tokens=64)
    add_log_level_argument(parser)
    return parser


def read_prompts(parser: argparse.ArgumentParser, path: str | None) -> list[str]:
    """Prompts from `path` (lines, or JSONL `input` fields) or stdin, one per line, blank lines
    included; exits (status 2) naming a malformed `.jsonl` line as FILE:LINE."""
    if path is not None and not as_path(path).is_file():
        common.fail(parser, f"--input_file {path} does not exist")
    try:
        text = as_path(path).read_text(encoding="utf-8") if path else sys.stdin.read()
    except UnicodeDecodeError as error:
        common.fail(parser, f"{path or 'stdin'} is not UTF-8 text ({error})")
    lines = text.splitlines()
    if not path or not path.endswith(".jsonl"):
        if not lines:
            common.fail(parser, f"no prompts in {path or 'stdin'}")
        return lines
    prompts = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError as error:
            common.fail(
                parser,
                f"{path}:{number} is not a JSON object ({error}); every line of "
                'a .jsonl input holds one prompt as {"input": ...}',
            )
        if not isinstance(record, dict) or not isinstance(record.get("input"), str):
            common.fail(parser, f"{path}:{number} has no string `input` field")
        prompts.append(record["input"])
    if not prompts:
        common.fail(parser, f"no prompts in {path}")
    return prompts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_command(PROG, lambda: generate(parser, args))


def generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Generate for every prompt and write the results; returns 0."""
    common.check_storage(parser, {"--input_file": args.input_file}, {})
    common.check_model_arguments(parser, args)
    common.decode_options(parser, args)  # validate before the (slow) model load
    prompts = read_prompts(parser, args.input_file)
    if args.mode == "clm":
        prompts = [clm_prompt(p) for p in prompts]
    text_model = common.load_model(parser, args)
    options = common.decode_options(parser, args, text_model)
    try:
        generations = text_model.generate(prompts, options, stop=args.stop, seed=args.seed)
    except ValueError as e:
        common.fail(parser, str(e))
    lines = [
        json.dumps(
            {"input": g.prompt, "output": g.text, "output_ids": g.token_ids, "score": g.score},
            ensure_ascii=False,
        )
        if args.format == "jsonl"
        else g.text.replace("\n", " ")
        for g in generations
    ]
    common.write_lines(lines, args.output, "outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
