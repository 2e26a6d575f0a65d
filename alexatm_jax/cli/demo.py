"""`alexatm-demo` (what `make demo` runs): the whole system end to end on a laptop CPU.

1. trains (or reuses) the demo SentencePiece vocabulary on data/sample;
2. pretrains the tiny model on the 80/20 denoising + causal-LM mixture over data/sample with
   gin/experiments/demo.gin (checkpoints, metrics.jsonl, TensorBoard; resumes if interrupted);
3. reports the loss drop from metrics.jsonl;
4. decodes greedily from the trained model: a `[CLM]` continuation and a denoising rewrite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Sequence
from alexatm_jax.cli.gin_flags import gin_bindings

DEMO_GIN = "gin/experiments/demo.gin"
DEFAULT_MODEL_DIR = "artifacts/demo_run"
SAMPLE_FILE = os.path.join("data", "sample", "en", "part1.txt")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of alexatm-demo."""
    parser = argparse.ArgumentParser(
        prog="alexatm-demo",
        description="Train the demo tokenizer and the tiny AlexaTM model on the embedded sample "
                    "corpus, then generate text with it. Extra --gin.KEY=VALUE arguments are "
                    f"gin bindings on top of {DEMO_GIN}.")
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help=f"training MODEL_DIR (default {DEFAULT_MODEL_DIR}); an existing run "
                             "there is resumed (or reused when complete)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete --model_dir first and train from scratch")
    parser.add_argument("--max_new_tokens", type=int, default=48,
                        help="generated tokens per example (default 48)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Options and gin bindings; exits with a usage error naming a bad argument."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=100")
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    args.model_dir = os.path.abspath(os.path.expanduser(args.model_dir))
    return args, bindings


def demo_prompts(repo_root: str) -> tuple[str, str, str]:
    """(CLM prompt, denoising input, the original sentence) built from the sample corpus.

    The CLM prompt is `[CLM] ` + the first 24 words of the first English document; the
    denoising input is its first sentence with every fifth word deleted (the pretraining noise
    deletes words without a mask token, PAPER.md §3).
    """
    with open(os.path.join(repo_root, SAMPLE_FILE), encoding="utf-8") as f:
        document = f.read().split("\n\n")[0].strip()
    words = document.split()
    sentence = document.split(". ")[0].strip().rstrip(".") + "."
    noisy = " ".join(w for i, w in enumerate(sentence.split()) if i % 5 != 3)
    return "[CLM] " + " ".join(words[:24]), noisy, sentence


def loss_summary(metrics_path: str) -> tuple[float, float, int, int]:
    """(first logged loss, last logged loss, their steps) from metrics.jsonl."""
    from alexatm_jax.training.metrics_writer import read_metrics

    records = [r for r in read_metrics(metrics_path) if isinstance(r.get("loss"), float)]
    if not records:
        raise RuntimeError(f"{metrics_path} has no training losses")
    return records[0]["loss"], records[-1]["loss"], records[0]["step"], records[-1]["step"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-demo`; returns the exit code."""
    args, bindings = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    from alexatm_jax.gin_registry import REPO_ROOT

    repo_root = str(REPO_ROOT)
    if not os.path.isdir(os.path.join(repo_root, "data", "sample")):
        print(f"alexatm-demo: error: the sample corpus {repo_root}/data/sample is missing; run "
              "the demo from a checkout of the repository", file=sys.stderr)
        return 2

    print("[1/4] Demo tokenizer (SentencePiece, trained on data/sample on first use)", flush=True)
    import tasks

    vocab = os.environ.get(tasks.VOCAB_ENV) or tasks.train_demo_vocabulary()
    print(f"      {vocab}", flush=True)

    print(f"[2/4] Pretraining the tiny model ({DEMO_GIN}) in {args.model_dir}", flush=True)
    from alexatm_jax import gin_registry

    try:  # strict gin: a misspelt macro or parameter is refused, not silently ignored
        gin_registry.parse_gin([DEMO_GIN], [f"MODEL_DIR = {args.model_dir!r}"] + bindings)
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"alexatm-demo: error: gin configuration: {error}", file=sys.stderr)
        return 2
    if args.fresh and os.path.isdir(args.model_dir):
        shutil.rmtree(args.model_dir)
    train_started = time.perf_counter()
    result = gin_registry.gin_train()
    train_seconds = time.perf_counter() - train_started
    if result.stopped_by_signal:
        print(f"alexatm-demo: stopped by {result.stopped_by_signal}; rerun to resume.")
        return 0

    first, last, first_step, last_step = loss_summary(os.path.join(args.model_dir,
                                                                   "metrics.jsonl"))
    drop = 1.0 - last / first
    print(f"[3/4] Training loss {first:.3f} (step {first_step}) -> {last:.3f} (step {last_step}):"
          f" {100 * drop:.0f}% lower; training took {train_seconds:.0f} s", flush=True)

    print("[4/4] Greedy decoding from the trained model", flush=True)
    from alexatm_jax.decoding import DecodeOptions
    from alexatm_jax.decoding.loading import load_text_model

    model = load_text_model(args.model_dir, tokenizer_path=vocab, batch_size=2)
    clm_prompt, noisy, original = demo_prompts(repo_root)
    options = DecodeOptions(max_new_tokens=args.max_new_tokens)
    clm, rewrite = model.generate([clm_prompt, noisy], options)
    print(f"  continuation  input : {clm_prompt}\n                output: {clm.text}")
    print(f"  denoising     input : {noisy}\n                output: {rewrite.text}\n"
          f"                (original: {original})")
    print("  (A 1M-parameter model after a few minutes of CPU training has learnt token "
          "statistics, not\n   text yet, so greedy output repeats itself; "
          "`alexatm-demo --gin.TRAIN_STEPS=2000` trains longer.)")
    print(f"\nDone in {time.perf_counter() - started:.0f} s.\n"
          f"  checkpoints : {os.path.join(args.model_dir, 'checkpoints')}\n"
          f"  metrics     : {os.path.join(args.model_dir, 'metrics.jsonl')}\n"
          f"  TensorBoard : tensorboard --logdir {os.path.join(args.model_dir, 'tensorboard')}\n"
          f"  load it     : python -c \"import alexatm_jax; m = "
          f"alexatm_jax.load('{args.model_dir}')\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
