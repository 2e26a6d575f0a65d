"""Data-pipeline throughput: target tokens per second per CPU core, raw text -> packed batches,
and the prepared path (`alexatm-data prepare` shards read by index) against it in the same run.

For denoising and CLM separately, the local-file tasks of every language in DATA_DIR are mixed
(each objective alone), converted to packed EncDec batches and drained; then the same objective's
rows are read from prepared data (--prepared DIR, else DATA_DIR prepared into a temporary
directory first, its time reported) for as long. Reported per objective and path:
  * target tokens per CPU-second (non-padding `decoder_target_tokens` / process CPU time): the
    per-core rate, insensitive to other load on the machine;
  * target tokens per wall-second divided by the cores the process is pinned to.
Beside it: target tokens per second that one forward+backward pass of the tiny model
(gin/models/tiny.gin) consumes on a batch of the same shape, i.e. the rate a trainer would
draw from the pipeline.

The prepared/streaming ratio of tokens per CPU-second is printed per objective.

  python benchmarks/data_pipeline.py --length 128 --batch_size 16 --cores 1
  python benchmarks/data_pipeline.py --length 1024 --model_steps 0 --prepared /tmp/prepared
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from machine_load import LoadMonitor  # noqa: E402


def pin_to_cores(count: int) -> list[int]:
    """Restricts this process to its first `count` allowed CPUs (call before importing TF)."""
    allowed = sorted(os.sched_getaffinity(0))
    if count > len(allowed):
        raise SystemExit(f"--cores {count}: only {len(allowed)} CPUs are available")
    os.sched_setaffinity(0, allowed[:count])
    return allowed[:count]


def objective_dataset(
    objective: str, data_dir: str, vocab_path: str | None, lengths: dict, seed: int
):
    """Packed EncDec features of every local task of one objective, mixed at the mixture's rates."""
    import seqio

    import tasks

    config = tasks.MixtureConfig(vocab_path=vocab_path)
    tasks.register_local_mixture(data_dir, config)
    rates = {
        n: r
        for n, r in tasks.mixture_rates(tasks.LOCAL_MIXTURE).items()
        if n.endswith(f"_{objective}")
    }
    mixture = seqio.Mixture(f"benchmark_{objective}", list(rates.items()))
    ds = mixture.get_dataset(lengths, split="train", shuffle=True, seed=seed, num_epochs=None)
    ds = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
    return seqio.EncDecFeatureConverter(pack=True)(ds, task_feature_lengths=lengths)


def drain(next_batch, seconds: float, cores: int) -> dict:
    """Calls `next_batch()` for `seconds`; returns its non-padding target token rates."""
    tokens = batches = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        batch = next_batch()
        tokens += int((batch["decoder_target_tokens"] > 0).sum())
        batches += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "batches": batches,
        "target_tokens": tokens,
        "padding_share": 1 - tokens / (batches * batch["decoder_target_tokens"].size),
        "tokens_per_cpu_second": tokens / cpu,
        "tokens_per_second_per_core": tokens / wall / cores,
    }


def measure_pipeline(ds, batch_size: int, warmup: int, seconds: float, cores: int) -> dict:
    """Drains `warmup` batches, then batches for `seconds`; returns token rates."""
    iterator = ds.batch(batch_size).as_numpy_iterator()
    for _ in range(warmup):
        next(iterator)
    return drain(lambda: next(iterator), seconds, cores)


def prepare_data(data_dir: str, vocab_path: str | None, out: str) -> dict:
    """`alexatm-data prepare` of DATA_DIR into `out`; returns its time and size."""
    import tasks
    from tasks import preparation

    config = tasks.MixtureConfig(vocab_path=vocab_path)
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = preparation.prepare(
        tasks.LOCAL_MIXTURE, data_dir=data_dir, config=config, out=out, progress=False
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(
        split["tokens"] for unit in manifest["units"].values() for split in unit["splits"].values()
    )
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "tokens_per_cpu_second": tokens / cpu,
    }


def prepared_rows(objective: str, directory: str, vocab_path: str | None, lengths: dict, seed: int):
    """The training rows of one objective's tasks of the prepared local mixture."""
    import tasks
    from alexatm_jax.data.prepared_batches import PreparedRows, checked_preparation

    manifest, recipe = checked_preparation(directory, tasks.LOCAL_MIXTURE, vocab_path)
    chosen = {n: t for n, t in recipe["tasks"].items() if t["objective"] == objective}
    return PreparedRows(
        directory,
        manifest,
        {**recipe, "tasks": chosen},
        split="train",
        sequence_length=lengths,
        seed=seed,
    )


def measure_prepared(rows, batch_size: int, warmup: int, seconds: float, cores: int) -> dict:
    """Reads `warmup` batches of rows, then batches for `seconds`; returns token rates."""
    rows.rows(0, warmup * batch_size)
    starts = iter(range(warmup * batch_size, 2**62, batch_size))
    return drain(lambda: rows.rows(next(starts), batch_size), seconds, cores)


def _print_rates(label: str, rates: dict) -> None:
    print(
        f"{label:18s} {rates['tokens_per_cpu_second']:>10,.0f} target tokens/CPU-s"
        f"  {rates['tokens_per_second_per_core']:>10,.0f} target tokens/s/core (wall)"
        f"  padding {rates['padding_share']:.1%}"
    )


def measure_tiny_model(batch: dict, steps: int) -> dict | None:
    """Target tokens per second of a jitted forward+backward of the tiny model on `batch`."""
    if not os.path.exists("gin/models/tiny.gin"):
        return None
    import jax
    import jax.numpy as jnp

    from alexatm_jax.gin_registry import model_config_from_gin, parse_gin
    from alexatm_jax.model import AlexaTM, init_params, model_inputs
    from alexatm_jax.training.loss import token_statistics

    parse_gin(["gin/models/tiny.gin"])
    config = model_config_from_gin()
    model = AlexaTM(config)
    params = init_params(config, jax.random.PRNGKey(0))
    inputs = {k: jnp.asarray(v) for k, v in model_inputs(batch).items()}
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = jnp.asarray(batch["decoder_loss_weights"])

    def loss(p):
        logits = model.apply({"params": p}, **inputs)
        stats = token_statistics(logits, targets, weights)
        return stats["loss_sum"] / stats["num_target_tokens"]

    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(params))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        jax.block_until_ready(step(params))
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    tokens = float(weights.sum())
    return {
        "step_seconds": wall,
        "target_tokens_per_second": tokens / wall,
        "target_tokens_per_cpu_second": tokens / cpu,
        "devices": str(jax.devices()[0].platform),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="data/sample")
    parser.add_argument(
        "--vocab", default=None, help="SentencePiece model (default: demo vocabulary)"
    )
    parser.add_argument("--length", type=int, default=1024, help="inputs and targets length")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--cores", type=int, default=1, help="CPUs to pin the process to")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per objective")
    parser.add_argument("--warmup", type=int, default=10, help="batches drained before measuring")
    parser.add_argument(
        "--model_steps", type=int, default=10, help="timed tiny-model steps (0: skip)"
    )
    parser.add_argument(
        "--objectives", nargs="+", default=["denoise", "clm"], choices=["denoise", "clm"]
    )
    parser.add_argument(
        "--prepared",
        help="data `alexatm-data prepare` wrote for DATA_DIR (default: prepare it into a "
        "temporary directory first)",
    )
    parser.add_argument("--streaming_only", action="store_true", help="skip the prepared path")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir} is not a directory")
    cpus = pin_to_cores(args.cores)
    monitor = LoadMonitor()

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.cores)
    tf.config.threading.set_intra_op_parallelism_threads(args.cores)
    lengths = {"inputs": args.length, "targets": args.length}
    print(f"pinned to CPUs {cpus}; length {args.length}; batch {args.batch_size}", file=sys.stderr)
    results = {}
    prepared = args.prepared
    if not args.streaming_only and not prepared:
        prepared = tempfile.mkdtemp(prefix="prepared_")
        results["prepare"] = prepare_data(args.data_dir, args.vocab, prepared)
        print(
            f"prepared {args.data_dir} into {prepared}: {results['prepare']['tokens']:,} tokens "
            f"in {results['prepare']['seconds']:.1f} s "
            f"({results['prepare']['tokens_per_cpu_second']:,.0f} tokens/CPU-s)"
        )
    for objective in args.objectives:
        options = tf.data.Options()
        options.threading.private_threadpool_size = args.cores
        ds = objective_dataset(objective, args.data_dir, args.vocab, lengths, seed=0).with_options(
            options
        )
        results[objective] = measure_pipeline(
            ds, args.batch_size, args.warmup, args.seconds, args.cores
        )
        _print_rates(f"{objective} streaming", results[objective])
        if args.streaming_only:
            continue
        rows = prepared_rows(objective, prepared, args.vocab, lengths, seed=0)
        rates = measure_prepared(rows, args.batch_size, args.warmup, args.seconds, args.cores)
        rates["ratio_to_streaming"] = (
            rates["tokens_per_cpu_second"] / results[objective]["tokens_per_cpu_second"]
        )
        results[f"{objective}_prepared"] = rates
        _print_rates(f"{objective} prepared", rates)
        print(
            f"{objective}: prepared / streaming = {rates['ratio_to_streaming']:.2f}x per CPU-second"
        )
    if args.model_steps:
        batch = next(
            objective_dataset("denoise", args.data_dir, args.vocab, lengths, seed=1)
            .batch(args.batch_size)
            .as_numpy_iterator()
        )
        model = measure_tiny_model(batch, args.model_steps)
        results["tiny_model"] = model
        if model:
            print(
                f"tiny model fwd+bwd {model['target_tokens_per_cpu_second']:>10,.0f} target "
                f"tokens/CPU-s  {model['target_tokens_per_second']:>10,.0f} target tokens/s "
                f"({model['step_seconds'] * 1000:.0f} ms/step on {model['devices']}, "
                f"{args.cores} core(s))"
            )
    results["machine_load"] = monitor.finish(cores_used=args.cores)
    print(LoadMonitor.describe(results["machine_load"]), file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
