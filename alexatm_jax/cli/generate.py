"""alexatm-generate: continue (CLM mode) or denoise prompts with a checkpoint.

Prompts come one per line from --input_file or stdin (a `.jsonl` file takes each line's
`input` field). Newlines cannot be tokenised: write `<br>` inside a prompt instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from alexatm_jax.cli import inference_arguments as common
from alexatm_jax.tokenization import clm_prompt


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of alexatm-generate."""
    parser = argparse.ArgumentParser(
        prog="alexatm-generate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parser.add_argument("--mode", choices=("clm", "denoise"), default="clm",
                        help="clm: prepend '[CLM] ' (continue the text); denoise: rewrite it")
    parser.add_argument("--input_file", help="prompts, one per line (default: stdin)")
    parser.add_argument("--output", help="write results here (default: stdout)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text: one output per line; jsonl: {input, output, output_ids, "
                             "score} per line")
    parser.add_argument("--stop", nargs="*", default=[], metavar="STR",
                        help="cut each output before the first of these strings")
    common.add_decoding_arguments(parser, max_new_tokens=64)
    return parser


def read_prompts(parser: argparse.ArgumentParser, path: str | None) -> list[str]:
    """Prompts from `path` (lines, or JSONL `input` fields) or stdin; blank lines are skipped."""
    if path is not None and not os.path.isfile(path):
        common.fail(parser, f"--input_file {path} does not exist")
    lines = (open(path, encoding="utf-8").read() if path else sys.stdin.read()).splitlines()
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path and path.endswith(".jsonl"):
            record = json.loads(line)
            if "input" not in record:
                common.fail(parser, f"{path}:{number} has no `input` field")
            prompts.append(record["input"])
        else:
            prompts.append(line)
    if not prompts:
        common.fail(parser, f"no prompts in {path or 'stdin'}")
    return prompts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    lines = [json.dumps({"input": g.prompt, "output": g.text, "output_ids": g.token_ids,
                         "score": g.score}, ensure_ascii=False)
             if args.format == "jsonl" else g.text.replace("\n", " ") for g in generations]
    common.write_lines(lines, args.output, "outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
