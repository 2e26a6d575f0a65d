"""Re-measure the README's three benchmark tables in one go, for a quiet moment (~7 min on 2 cores).

    python benchmarks/quiet_tables.py --out_dir quiet_tables/

Runs, one after another, each in its own process (each records its own load average and core
count before and after, `benchmarks/machine_load.py`):

  1. train step vs the PyTorch reference: `train_step.py --gin_file gin/models/small.gin
     --batch 8 --input_len 256 --target_len 256 --steps 2 --rounds 3`;
  2. greedy decoding vs the reference: `decode.py --batch_sizes 1 16 --input_len 64
     --new_tokens 64 --rounds 3`;
  3. the data pipeline: `data_pipeline.py --length 1024 --model_steps 0` and `--length 128
     --model_steps 20` (`--data_seconds` per objective; the README's figures used 30).

Then prints each table in the README's layout with its load record, and flags any busy run:
only tables whose runs are all quiet should replace the README's. The JSON of every run is kept
in `--out_dir`. `--smoke` runs the same pipeline with tiny settings (seconds, not minutes) to
check that the scripts and this one still fit together; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

BENCHMARKS = pathlib.Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from machine_load import LoadMonitor  # noqa: E402

TRAIN_ARGS = [
    "--gin_file",
    "gin/models/small.gin",
    "--batch",
    "8",
    "--input_len",
    "256",
    "--target_len",
    "256",
    "--steps",
    "2",
    "--rounds",
    "3",
]
TRAIN_SMOKE = [
    "--gin_file",
    "gin/models/tiny.gin",
    "--batch",
    "2",
    "--input_len",
    "16",
    "--target_len",
    "16",
    "--steps",
    "1",
    "--rounds",
    "1",
    "--warmup",
    "0",
]
DECODE_ARGS = [
    "--batch_sizes",
    "1",
    "16",
    "--input_len",
    "64",
    "--new_tokens",
    "64",
    "--rounds",
    "3",
]
DECODE_SMOKE = [
    "--batch_sizes",
    "1",
    "--input_len",
    "8",
    "--new_tokens",
    "4",
    "--d_model",
    "64",
    "--layers",
    "1",
    "--heads",
    "2",
    "--ffn",
    "128",
    "--vocab",
    "512",
    "--rounds",
    "1",
]
DATA_RUNS = (("1024", "0"), ("128", "20"))  # (length, tiny-model steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out_dir", default="quiet_tables", help="where each run's JSON goes")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("train", "decode", "data"),
        default=["train", "decode", "data"],
        help="tables to re-measure",
    )
    parser.add_argument(
        "--data_seconds",
        type=float,
        default=15.0,
        help="measured seconds per objective and length in the data table",
    )
    parser.add_argument(
        "--vocab",
        default=None,
        help="SentencePiece model for the data table (default: the demo "
        "vocabulary, `alexatm-vocab train --demo`)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings: checks the plumbing, measures nothing"
    )
    args = parser.parse_args(argv)
    if args.data_seconds <= 0:
        parser.error("--data_seconds must be > 0")
    return args


def run_script(script: str, args: list[str]) -> str:
    """Runs benchmarks/<script> from the repository root; returns its stdout (raises on failure).

    Its output is echoed as it comes, so a long run shows progress."""
    command = [sys.executable, str(BENCHMARKS / script)] + args
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait():
        raise SystemExit(f"{script} failed with exit status {process.returncode}")
    return "".join(lines)


def load_note(load: dict) -> str:
    """One line: the run's load record, with BUSY in front when it was not quiet."""
    line = (
        f"load average {load['load_before']:.2f} before, {load['load_mean_during']:.2f} "
        f"during, {load['load_after']:.2f} after; {load['cores']} cores; other processes "
        f"{load['other_processes_cores']} cores"
    )
    return (
        ("BUSY (" + "; ".join(load["busy_reasons"]) + "): " + line)
        if load["busy"]
        else "quiet: " + line
    )


def train_table(out_dir: pathlib.Path, smoke: bool) -> list[str]:
    path = out_dir / "train_step.json"
    run_script(
        "train_step.py", (TRAIN_SMOKE if smoke else TRAIN_ARGS) + ["--output_json", str(path)]
    )
    result = json.loads(path.read_text())
    ours = result["ours"]
    rows = [
        "| reference's host allocator | ours s/step (CPU-s/step) | reference s/step (CPU-s/step) "
        "| ours / reference tokens/s |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (
        ("reference", "glibc defaults (as PyTorch ships)"),
        ("reference_retain", "ours (`alexatm_jax/host.py`)"),
    ):
        if name in result:
            ref = result[name]
            rows.append(
                f"| {label} | {ours['step_time_s']:.2f} ({ours['cpu_time_per_step_s']:.1f}) | "
                f"{ref['step_time_s']:.2f} ({ref['cpu_time_per_step_s']:.1f}) | "
                f"**{result[f'ratio_ours_over_{name}']:.2f}x** |"
            )
    return rows + [load_note(result["machine_load"])]


def decode_table(out_dir: pathlib.Path, smoke: bool) -> list[str]:
    path = out_dir / "decode.json"
    run_script("decode.py", (DECODE_SMOKE if smoke else DECODE_ARGS) + ["--json", str(path)])
    result = json.loads(path.read_text())
    threads = result["args"]["threads"]
    lines = [
        "| batch | threads | ours tok/s | reference tok/s | ratio | decode loop only: ours "
        "/ reference tok/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['batch']} | {threads} | {row['ours_tokens_per_s']:.1f} | "
            f"{row['reference_tokens_per_s']:.1f} | {row['ratio']:.2f}x | "
            f"{row['ours_decode_tokens_per_s']:.1f} / "
            f"{row['reference_decode_tokens_per_s']:.1f} | {row['decode_ratio']:.2f}x |"
        )
    return lines + [load_note(result["machine_load"])]


def data_table(out_dir: pathlib.Path, smoke: bool, seconds: float, vocab: str | None) -> list[str]:
    lines = [
        "| measured | length | target tokens / CPU-s | target tokens / s (wall, 1 core) "
        "| target padding |",
        "| --- | --- | --- | --- | --- |",
    ]
    notes = []
    runs = (("128", "1"),) if smoke else DATA_RUNS
    for length, model_steps in runs:
        args = ["--length", length, "--seconds", str(seconds), "--model_steps", model_steps]
        if smoke:
            args += ["--warmup", "1", "--batch_size", "2"]
        if vocab:
            args += ["--vocab", vocab]
        result = json.loads(run_script("data_pipeline.py", args).strip().splitlines()[-1])
        (out_dir / f"data_pipeline_{length}.json").write_text(json.dumps(result, indent=2))
        for objective, label in (("denoise", "denoising pipeline"), ("clm", "CLM pipeline")):
            rates = result[objective]
            lines.append(
                f"| {label} | {length} | {rates['tokens_per_cpu_second']:,.0f} | "
                f"{rates['tokens_per_second_per_core']:,.0f} | "
                f"{rates['padding_share']:.0%} |"
            )
        model = result.get("tiny_model")
        if model:
            lines.append(
                f"| tiny model forward+backward | {length} | "
                f"{model['target_tokens_per_cpu_second']:,.0f} | "
                f"{model['target_tokens_per_second']:,.0f} "
                f"({model['step_seconds'] * 1000:.0f} ms/step) | |"
            )
        notes.append(f"length {length}: {load_note(result['machine_load'])}")
    return lines + notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = pathlib.Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    monitor = LoadMonitor()
    if monitor.load_before > 0.5:
        print(
            f"!! load average is {monitor.load_before:.2f} at the start: not a quiet moment "
            "yet; each run whose load exceeds the cores it uses is marked busy",
            flush=True,
        )
    start = time.perf_counter()
    tables = {}
    if "train" in args.only:
        tables["Train step vs the PyTorch reference (f32, small.gin, batch 8 x 256/256)"] = (
            train_table(out_dir, args.smoke)
        )
    if "decode" in args.only:
        tables["Greedy decoding vs the reference (batch 1 and 16, 64 + 64 tokens)"] = decode_table(
            out_dir, args.smoke
        )
    if "data" in args.only:
        tables["Data pipeline (data/sample, batch 16)"] = data_table(
            out_dir, args.smoke, 1.0 if args.smoke else args.data_seconds, args.vocab
        )
    load = monitor.finish(cores_used=os.cpu_count())
    (out_dir / "quiet_tables_load.json").write_text(json.dumps(load, indent=2))
    print(
        f"\n==== {len(tables)} table(s) in {time.perf_counter() - start:.0f} s"
        f"{' (SMOKE: settings too small to mean anything)' if args.smoke else ''} ===="
    )
    for title, lines in tables.items():
        print(f"\n{title}\n" + "\n".join(lines))
    print("\nwhole run: " + LoadMonitor.describe(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
