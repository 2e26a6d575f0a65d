"""Train one gin twice, streaming the mixture and reading it prepared, and plot both losses.

    python benchmarks/prepared_vs_streaming.py --gin_file gin/experiments/smoke_cpu.gin \\
        --steps 200 --out artifacts/prepared_vs_streaming/smoke
    python benchmarks/prepared_vs_streaming.py --gin_file gin/experiments/demo.gin \\
        --steps 1000 --out artifacts/prepared_vs_streaming/demo

Prepares the gin's local mixture (its MixtureConfig, DATA_DIR: data/sample unless the gin binds
register_local_mixture.data_dir) into OUT/prepared, trains the gin for --steps steps with
`train.data_source = 'seqio'` into OUT/streaming and with `'prepared'` into OUT/prepared_run
(same seed, model, schedule), and writes OUT/curves.json and OUT/curves.png: the training loss
per logged step of both, and its moving average. The two runs see different batches of the
same mixture, so their losses agree within the noise of a batch, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine_load import LoadMonitor  # noqa: E402

from alexatm_jax.cli.gin_flags import gin_bindings  # noqa: E402

SOURCES = {"streaming": "seqio", "prepared_run": "prepared"}


def _parse(gin_file: str, bindings: list[str]) -> None:
    from alexatm_jax import gin_registry

    gin_registry.parse_gin([gin_file], bindings)


def _prepare(gin_file: str, bindings: list[str], out: str) -> None:
    """Prepare the gin's local mixture (its own MixtureConfig and data dir) into `out`."""
    import gin
    import tasks
    from tasks import preparation

    _parse(gin_file, bindings)
    try:
        data_dir = gin.query_parameter("register_local_mixture.data_dir")
    except ValueError:
        data_dir = None
    preparation.prepare(
        tasks.LOCAL_MIXTURE, data_dir=data_dir, config=tasks.MixtureConfig(), out=out
    )


def _train(
    gin_file: str, bindings: list[str], model_dir: str, steps: int, source: str, prepared: str
) -> list[dict]:
    """Train into `model_dir` reading `source`; returns the training records of metrics.jsonl."""
    from alexatm_jax import gin_registry
    from alexatm_jax.training.trainer import train

    _parse(
        gin_file,
        [
            *bindings,
            f"MODEL_DIR = {model_dir!r}",
            f"TRAIN_STEPS = {steps}",
            f"CHECKPOINT_PERIOD = {steps}",
            "EVAL_PERIOD = 0",
            "train.log_every = 10",
            "train.progress_bar = False",
            f"train.data_source = {source!r}",
            f"train.prepared_data = {prepared!r}",
        ],
    )
    train(gin_registry.train_config_from_gin())
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [{"step": r["step"], "loss": r["loss"]} for r in records if "loss" in r]


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _plot(curves: dict[str, list[dict]], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, records), colour in zip(curves.items(), ("tab:blue", "tab:orange")):
        steps = [r["step"] for r in records]
        losses = [r["loss"] for r in records]
        label = "streaming (SeqIO)" if name == "streaming" else "prepared (read by index)"
        ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(losses, 10), color=colour, label=f"{label}, moving average")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", required=True, help="the experiment gin to train")
    parser.add_argument("--steps", type=int, required=True, help="training steps of each run")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.BATCH_SIZE=8")
    if args.steps < 10:
        parser.error("--steps must be >= 10")
    if os.path.exists(args.out):
        parser.error(f"{args.out} exists: give a new --out")
    prepared = os.path.join(args.out, "prepared")
    monitor = LoadMonitor()
    _prepare(args.gin_file, bindings, prepared)
    curves = {
        name: _train(
            args.gin_file, bindings, os.path.join(args.out, name), args.steps, source, prepared
        )
        for name, source in SOURCES.items()
    }
    load = monitor.finish()
    tail = {name: sum(r["loss"] for r in c[-10:]) / len(c[-10:]) for name, c in curves.items()}
    result = {
        "gin_file": args.gin_file,
        "bindings": bindings,
        "steps": args.steps,
        "final_loss_mean_of_last_10_logged": tail,
        "machine_load": load,
        "curves": curves,
    }
    with open(os.path.join(args.out, "curves.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    title = f"{args.gin_file}, {args.steps} steps: training loss, streaming vs prepared data"
    _plot(curves, title, os.path.join(args.out, "curves.png"))
    print(
        "final loss (mean of the last 10 logged steps): "
        + ", ".join(f"{name} {value:.3f}" for name, value in tail.items())
        + f"\nwrote {args.out}/curves.json and curves.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
