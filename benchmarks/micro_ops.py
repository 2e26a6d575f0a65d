"""Operations the model code implements its own way for speed, timed against the usual way.

    python benchmarks/micro_ops.py [--repeats 50] [--cases argmax dropout_mask] [--output_json F]

* `dropout_mask`: a [8, 256, 512] dropout keep-mask, `threefry_packed` (one Threefry hash per
  four elements, alexatm_jax/model/dropout.py) vs `jax.random.bernoulli` (`threefry2x32`);
* `argmax`: `first_argmax` (alexatm_jax/decoding/logits_processing.py) vs `jnp.argmax` over
  [16, 32128] float32 logits (one greedy decode step of small.gin at batch 16).

Both call the library's own functions. Each is jitted, compiled and warmed up, then timed
`--repeats` times, alternating; the median milliseconds are printed with the ratio (alternative
/ ours) and the machine's load record (benchmarks/machine_load.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from machine_load import LoadMonitor  # noqa: E402

from alexatm_jax.decoding.logits_processing import first_argmax  # noqa: E402
from alexatm_jax.model.dropout import keep_mask  # noqa: E402

Case = tuple[Callable, Callable, tuple]  # (ours, alternative, arguments)


def dropout_case() -> Case:
    key = jax.random.key(0)
    shape = (8, 256, 512)
    return (
        jax.jit(lambda k: keep_mask(k, shape, 0.1, "threefry_packed")),
        jax.jit(lambda k: keep_mask(k, shape, 0.1, "threefry2x32")),
        (key,),
    )


def argmax_case() -> Case:
    logits = jax.random.normal(jax.random.key(1), (16, 32128), jnp.float32)
    return jax.jit(first_argmax), jax.jit(lambda x: jnp.argmax(x, axis=-1)), (logits,)


CASES = {"dropout_mask": dropout_case, "argmax": argmax_case}


def _seconds(fn: Callable, args: tuple) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def time_case(ours: Callable, alternative: Callable, args: tuple, repeats: int) -> dict:
    """Median milliseconds of each (alternating calls after a warm-up) and their ratio."""
    for fn in (ours, alternative):
        for _ in range(3):
            _seconds(fn, args)
    times: dict[str, list[float]] = {"ours": [], "alternative": []}
    for _ in range(repeats):
        times["ours"].append(_seconds(ours, args))
        times["alternative"].append(_seconds(alternative, args))
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    return {
        "ours_ms": ms["ours"],
        "alternative_ms": ms["alternative"],
        "ratio": ms["alternative"] / ms["ours"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each variant")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--output_json", help="also write the results here")
    args = parser.parse_args(argv)
    monitor = LoadMonitor()
    results = {}
    for name in args.cases:
        results[name] = time_case(*CASES[name](), repeats=args.repeats)
        row = results[name]
        print(
            f"{name:>13}: ours {row['ours_ms']:.3f} ms, alternative "
            f"{row['alternative_ms']:.3f} ms, alternative / ours {row['ratio']:.2f}x"
        )
    results["machine_load"] = monitor.finish()
    print(LoadMonitor.describe(results["machine_load"]))
    if args.output_json:
        pathlib.Path(args.output_json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
