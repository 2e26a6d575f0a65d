"""`make finetune-demo`: fine-tuning end to end on a laptop CPU, from a checkpoint and JSONL pairs.

    python -m alexatm_jax.cli.finetune_demo [--out artifacts/finetune_demo] [--fresh] \\
        [--init_from CKPT_OR_MODEL_DIR] [--examples N] [--gin.KEY=VALUE ...]

1. the task: phrases of 3-5 words drawn from the most frequent English words of data/sample,
   the target is the phrase with its word order reversed; training phrases come from the first
   four English files, the held-out (validation) phrases from the fifth; OUT/data/*.jsonl;
2. the starting checkpoint: a randomly initialised tiny model with the demo vocabulary (OUT/init),
   or --init_from (e.g. the `make demo` run, artifacts/demo_run);
3. fine-tunes it with gin/experiments/finetune_demo.gin (alexatm-train's path: the model comes
   from the checkpoint, the metric is scored every EVAL_PERIOD steps, the best kept);
4. prints held-out BLEU before, during and after, a few held-out reversals by the best
   checkpoint (OUT/run/best), and writes the metric against the steps as
   OUT/run/finetune_metric.png.
Exit codes: 0 done, 1 the run failed, 2 bad arguments (docs/exit_codes.md).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence

from alexatm_jax.cli.gin_flags import gin_bindings

DEMO_GIN = "gin/experiments/finetune_demo.gin"
DEFAULT_OUT = "artifacts/finetune_demo"
COMMON_WORDS = 300
TRAIN_PAIRS, HELD_OUT_PAIRS = 4000, 128
SHOWN = 4


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Options and gin bindings; exits 2 naming a bad argument."""
    parser = argparse.ArgumentParser(
        prog="finetune-demo",
        description="Fine-tune a tiny model on a word-order reversal task built from "
        "data/sample and show its held-out BLEU rise. Extra --gin.KEY=VALUE arguments are gin "
        f"bindings on top of {DEMO_GIN}.",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"work directory ({DEFAULT_OUT})")
    parser.add_argument("--fresh", action="store_true", help="delete OUT/run first")
    parser.add_argument(
        "--init_from",
        default=None,
        help="start from this model checkpoint or training MODEL_DIR with the demo vocabulary "
        "(default: a random tiny model written to OUT/init)",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=SHOWN,
        help=f"held-out reversals to print at the end (default {SHOWN}; 0: none)",
    )
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=100")
    if args.examples < 0:
        parser.error(f"--examples must be >= 0, got {args.examples}")
    if args.init_from and not os.path.isdir(args.init_from):
        parser.error(f"--init_from {args.init_from} is not a directory")
    args.out = os.path.abspath(args.out)
    return args, bindings


def phrase_pairs(sample_dir: str, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """{'train', 'validation'}: {'input': phrase, 'target': its words reversed} pairs."""
    files = sorted(glob.glob(os.path.join(sample_dir, "en", "*.txt")))
    words = {path: open(path, encoding="utf-8").read().lower().split() for path in files}
    counts = collections.Counter(w for path in files for w in words[path] if w.isalpha())
    common = {w for w, _ in counts.most_common(COMMON_WORDS)}
    rng = random.Random(seed)
    out = {}
    for split, paths, count in (
        ("train", files[:-1], TRAIN_PAIRS),
        ("validation", files[-1:], HELD_OUT_PAIRS),
    ):
        stream = [w for path in paths for w in words[path] if w in common]
        pairs = []
        while len(pairs) < count:
            start, length = rng.randrange(len(stream) - 5), rng.randint(3, 5)
            phrase = stream[start : start + length]
            pairs.append({"input": " ".join(phrase), "target": " ".join(reversed(phrase))})
        out[split] = pairs
    return out


def write_pairs(pairs: dict[str, list[dict[str, str]]], data_dir: str) -> None:
    """OUT/data/{train,validation}.jsonl."""
    os.makedirs(data_dir, exist_ok=True)
    for split, rows in pairs.items():
        with open(os.path.join(data_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def write_random_checkpoint(path: str, vocab: str) -> None:
    """A randomly initialised demo-sized model with the demo vocabulary, as a model checkpoint
    (what `alexatm-convert hf-to-jax` writes for a release)."""
    import jax

    from alexatm_jax.checkpoints.model_checkpoint import save_model_checkpoint
    from alexatm_jax.model import ModelConfig
    from alexatm_jax.model.params import init_params
    from tasks.vocabularies import read_special_ids

    ids = read_special_ids(vocab)
    config = ModelConfig(
        vocab_size=ids.vocab_size,
        d_model=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_encoder_heads=4,
        num_decoder_heads=4,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        max_positions=128,
        share_embeddings=True,
        tie_word_embeddings=True,
        dropout_rate=0.0,
        init_std=0.05,
        pad_token_id=ids.pad,
        eos_token_id=ids.eos,
        decoder_start_token_id=ids.pad,
    )
    params = init_params(config, jax.random.key(0))
    save_model_checkpoint(path, config, params, [vocab], source="finetune-demo", overwrite=True)


def show_reversals(checkpoint: str, rows: list[dict[str, str]]) -> None:
    """Greedy outputs of the checkpoint (a training MODEL_DIR, e.g. MODEL_DIR/best) for `rows`."""
    from alexatm_jax.decoding.loading import load_text_model
    from alexatm_jax.decoding.options import DecodeOptions

    model = load_text_model(checkpoint, batch_size=len(rows))
    outputs = model.generate([row["input"] for row in rows], DecodeOptions(max_new_tokens=12))
    print(f"      held-out phrases, reversed by {checkpoint}:")
    for row, out in zip(rows, outputs):
        mark = "ok" if out.text.strip() == row["target"] else "  "
        print(f"      {mark} {row['input']!r:32} -> {out.text.strip()!r}")


def metric_curve(metrics_path: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in metrics.jsonl."""
    with open(metrics_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], float(r[key])) for r in records if key in r]


def plot_curve(curve: list[tuple[int, float]], label: str, path: str) -> None:
    """The metric against the steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(label)
    ax.set_title("finetune-demo: held-out BLEU (word-order reversal)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _prepare(args: argparse.Namespace, sample_dir: str) -> tuple[dict, str, str]:
    """Steps 1 and 2: the task's pairs written under --out, and the starting checkpoint.
    Returns (the pairs by split, their directory, the checkpoint to start from)."""
    print("[1/4] The task: reverse the word order of short English phrases", flush=True)
    import tasks

    vocab = os.environ.get(tasks.VOCAB_ENV) or tasks.train_demo_vocabulary()
    pairs = phrase_pairs(sample_dir)
    data_dir = os.path.join(args.out, "data")
    write_pairs(pairs, data_dir)
    for row in pairs["train"][:2]:
        print(f"      {row['input']!r} -> {row['target']!r}")
    print(f"      {len(pairs['train'])} training pairs, {len(pairs['validation'])} held out")
    init_from = args.init_from or os.path.join(args.out, "init")
    if not args.init_from:
        print("[2/4] Starting checkpoint: a random tiny model with the demo vocabulary", flush=True)
        write_random_checkpoint(init_from, vocab)
    else:
        print(f"[2/4] Starting checkpoint: {init_from}", flush=True)
    return pairs, data_dir, init_from


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args, bindings = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    from alexatm_jax.gin_registry import REPO_ROOT

    pairs, data_dir, init_from = _prepare(args, os.path.join(REPO_ROOT, "data", "sample"))
    import tasks

    model_dir = os.path.join(args.out, "run")
    if args.fresh and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)

    from alexatm_jax import gin_registry
    from alexatm_jax.training.eval_hooks import EvalContext
    from alexatm_jax.training.trainer import train

    try:
        gin_registry.parse_gin(
            [DEMO_GIN],
            [
                f"MODEL_DIR = {model_dir!r}",
                f"INIT_FROM = {init_from!r}",
                f"FINETUNE_DATA = {data_dir!r}",
            ]
            + bindings,
        )
        config = gin_registry.run_config_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"finetune-demo: error: gin configuration: {error}", file=sys.stderr)
        return 2
    tasks.register_for(config.mixture, config=tasks.MixtureConfig(vocab_path=config.vocab_path))
    hook = config.eval_hooks[0]
    from alexatm_jax.training.warm_start import load_source_params

    _, initial = load_source_params(init_from)
    context = EvalContext(
        step=0,
        model_config=config.model_config,
        params=initial,
        partitioner=None,
        vocab_path=config.vocab_path,
        data_dir=None,
        sequence_length=config.sequence_length,
    )
    before = hook(context)[hook.main_metric]
    print(f"      held-out {hook.main_metric} before fine-tuning: {before:.1f}", flush=True)

    print(f"[3/4] Fine-tuning ({DEMO_GIN}) in {model_dir}", flush=True)
    train_started = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - train_started
    if result.stopped_by_signal:
        print(f"finetune-demo: stopped by {result.stopped_by_signal}; rerun to resume.")
        return 0

    print("[4/4] Held-out metric against the steps", flush=True)
    curve = [(0, before)] + metric_curve(os.path.join(model_dir, "metrics.jsonl"), hook.main_metric)
    for step, value in curve:
        print(f"      step {step:5d}  {hook.main_metric} {value:5.1f}")
    plot = os.path.join(model_dir, "finetune_metric.png")
    plot_curve(curve, hook.main_metric, plot)
    best = max(value for _, value in curve)
    if args.examples:
        show_reversals(os.path.join(model_dir, "best"), pairs["validation"][: args.examples])
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s (fine-tuning {train_seconds:.0f} s): "
        f"held-out BLEU {before:.1f} before, {curve[-1][1]:.1f} after (best {best:.1f}).\n"
        f"  plot        : {plot}\n"
        f"  best model  : {os.path.join(model_dir, 'best')}\n"
        f"  metrics     : {os.path.join(model_dir, 'metrics.jsonl')}\n"
        f"  TensorBoard : tensorboard --logdir {os.path.join(model_dir, 'tensorboard')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
