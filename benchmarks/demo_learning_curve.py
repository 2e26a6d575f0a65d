"""The demo's held-out denoising against training steps: tokens restored, deleted tokens put
back, and the copy baseline, for each checkpoint of one demo training run.

    python benchmarks/demo_learning_curve.py --steps 3000 --every 250 --out artifacts/demo_curve
    python benchmarks/demo_learning_curve.py --steps 1500 --every 250 --out /tmp/c \\
        --gin.train.sequence_length="{'inputs': 32, 'targets': 32}"

Trains gin/experiments/demo.gin (plus the --gin.KEY=VALUE bindings given) for --steps steps,
keeping a checkpoint every --every steps, then scores every checkpoint on the same held-out
examples as alexatm-demo (greedy). Writes OUT/curve.json and OUT/curve.png; prints a table.
Training seconds per step come from the run's own wall clock, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine_load import LoadMonitor  # noqa: E402

from alexatm_jax.cli import demo  # noqa: E402
from alexatm_jax.cli.gin_flags import gin_bindings  # noqa: E402


def _train(model_dir: str, steps: int, every: int, bindings: list[str]) -> float:
    """Train the demo gin into a fresh `model_dir`; returns the training wall time (s)."""
    from alexatm_jax import gin_registry
    from alexatm_jax.training.trainer import train

    gin_registry.parse_gin(
        [demo.DEMO_GIN],
        [
            f"MODEL_DIR = {model_dir!r}",
            f"TRAIN_STEPS = {steps}",
            f"CHECKPOINT_PERIOD = {every}",
            f"train.keep_checkpoints = {steps // every + 1}",
            "train.progress_bar = False",
        ]
        + bindings,
    )
    started = time.perf_counter()
    train(gin_registry.train_config_from_gin())
    return time.perf_counter() - started


def _score_checkpoints(model_dir: str, vocab: str, examples, target_length: int) -> list[dict]:
    from alexatm_jax.decoding.loading import load_text_model

    rows = []
    checkpoints = os.path.join(model_dir, "checkpoints")
    for step in sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit()):
        model = load_text_model(
            os.path.join(checkpoints, str(step)), tokenizer_path=vocab, batch_size=16
        )
        ours, copying, _ = demo.score_held_out(model, examples, target_length)
        rows.append(
            {
                "step": step,
                "accuracy": ours.accuracy,
                "deleted_recall": ours.deleted_recall,
                "copy_accuracy": copying.accuracy,
            }
        )
        print(
            f"step {step:6d}  restored {100 * ours.accuracy:5.1f}%  (copying "
            f"{100 * copying.accuracy:5.1f}%)  deleted put back {100 * ours.deleted_recall:5.1f}%",
            flush=True,
        )
    return rows


def _plot(rows: list[dict], seconds_per_step: float, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [100 * r["accuracy"] for r in rows], "o-", label="tokens restored in order")
    ax.plot(steps, [100 * r["copy_accuracy"] for r in rows], "--", label="copying the input")
    ax.plot(steps, [100 * r["deleted_recall"] for r in rows], "s-", label="deleted tokens put back")
    ax.set_xlabel(f"training step ({seconds_per_step:.3f} s/step on this run's machine)")
    ax.set_ylabel("% of held-out tokens")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--every", type=int, default=250, help="steps between checkpoints")
    parser.add_argument("--eval_examples", type=int, default=48, help="held-out examples")
    parser.add_argument("--out", required=True, help="output directory (curve.json, curve.png)")
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=100")
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        parser.error("--steps and --every must be >= 1, and --every must divide --steps")
    demo.quiet_accelerator_probes()
    import gin
    import tasks

    os.makedirs(args.out, exist_ok=True)
    model_dir = os.path.join(args.out, "run")
    if os.path.exists(model_dir):
        parser.error(f"{model_dir} exists: give a new --out")
    vocab = os.environ.get(tasks.VOCAB_ENV) or tasks.train_demo_vocabulary()
    monitor = LoadMonitor()
    seconds = _train(model_dir, args.steps, args.every, bindings)
    load = monitor.finish()
    print(LoadMonitor.describe(load))
    sequence_length = dict(gin.query_parameter("train.sequence_length"))
    examples = demo.held_out_examples(sequence_length, args.eval_examples)
    rows = _score_checkpoints(model_dir, vocab, examples, sequence_length["targets"])
    result = {
        "steps": args.steps,
        "bindings": bindings,
        "train_seconds": seconds,
        "seconds_per_step": seconds / args.steps,
        "machine_load": load,
        "curve": rows,
    }
    with open(os.path.join(args.out, "curve.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    title = "alexatm-demo held-out denoising" + (f" ({' '.join(bindings)})" if bindings else "")
    _plot(rows, seconds / args.steps, title, os.path.join(args.out, "curve.png"))
    print(
        f"training {seconds:.0f} s ({seconds / args.steps:.3f} s/step"
        f"{', BUSY machine' if load['busy'] else ''}); wrote {args.out}/curve.json and curve.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
