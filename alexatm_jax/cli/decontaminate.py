"""`alexatm-decontaminate`: build the 13-gram set of benchmark texts for training-data filtering.

  alexatm-decontaminate --benchmarks xnli.jsonl flores.txt --out artifacts/benchmark.ngrams

Text files: one benchmark text per line. jsonl files: every string value of each object. `.gz`
is decompressed. Point MixtureConfig.ngrams_path (gin) or `alexatm-inspect --ngrams` at the output
to drop training documents that share an n-gram with it.
"""

from __future__ import annotations

import argparse
import os
import sys

from alexatm_jax.cli.errors import add_log_level_argument, configure_logging, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexatm-decontaminate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    parser.add_argument("--benchmarks", nargs="+", required=True, help="benchmark text/jsonl files")
    parser.add_argument("--out", required=True, help="output n-gram file (one n-gram per line)")
    parser.add_argument("--n", type=int, default=13, help="n-gram length in units (default 13)")
    add_log_level_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `alexatm-decontaminate`; returns the exit status (alexatm_jax.cli.errors:
    2 for bad arguments, 1 with one line for a failure, --log_level DEBUG for its traceback)."""
    return run_command("alexatm-decontaminate", lambda: _main(argv) or 0)


def _main(argv: list[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    missing = [path for path in args.benchmarks if not os.path.isfile(path)]
    if missing:
        parser.error(f"benchmark files not found: {', '.join(missing)}")
    if args.n < 1:
        parser.error("--n must be >= 1")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"output directory {out_dir} does not exist")

    from tasks.decontamination import benchmark_texts, collect_ngrams, write_ngrams

    ngrams: set[str] = set()
    texts = short = 0
    try:
        for path in args.benchmarks:
            found, count, too_short = collect_ngrams(benchmark_texts(path), args.n)
            print(
                f"{path}: {count} texts, {len(found)} {args.n}-grams, "
                f"{too_short} shorter than {args.n} units"
            )
            ngrams |= found
            texts += count
            short += too_short
    except (OSError, ValueError) as e:
        sys.exit(f"alexatm-decontaminate: {e}")
    if not ngrams:
        sys.exit(f"alexatm-decontaminate: no text has {args.n} units; nothing written")
    write_ngrams(ngrams, args.out)
    print(f"wrote {len(ngrams)} distinct {args.n}-grams from {texts} texts to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
