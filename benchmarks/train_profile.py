"""Where the time of one train step goes, per XLA op, on this machine (no reference needed).

    python benchmarks/train_profile.py --gin_file gin/models/small.gin --batch 8 \
        --input_len 256 --target_len 256 --top 30

Builds the train step `benchmarks/train_step.py` times (same model, batch, AdamW, dropout),
compiles it, runs `--warmup` steps, then `--steps` steps under the JAX profiler. Every op's
duration is summed per HLO `op_name` (layer numbers folded into `layers_*`, so one row covers
all layers; `fwd`/`bwd` tells the forward pass from the backward pass, `opt` the optimizer)
and printed as ms per step, largest first, with the instruction's result shape. A second table
sums the same time per kind of op (dots, random bits, elementwise fusions, copies/transposes,
reductions, ...). The HLO is dumped next to the trace (`--out`) for a closer look.

The per-op times are wall time of each op on its thread; with two threads (XLA:CPU's thunk
executor and Eigen's pool) their sum can exceed the wall time per step, which is printed too.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

from machine_load import LoadMonitor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gin_file", default=str(REPO_ROOT / "gin" / "models" / "small.gin"))
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="extra gin binding, e.g. ModelConfig.dropout_rate=0.0",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input_len", type=int, default=256)
    parser.add_argument("--target_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--top", type=int, default=30, help="rows to print")
    parser.add_argument(
        "--top_thunks",
        type=int,
        default=0,
        help="also print the N most expensive individual thunks",
    )
    parser.add_argument(
        "--num_cpu_devices",
        type=int,
        default=1,
        help="emulated CPU devices, data-parallel (default 1)",
    )
    parser.add_argument("--out", help="directory for the trace and HLO dump (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("batch", "input_len", "target_len", "steps", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """{instruction name: (result shape, op_name metadata, opcode)} of an HLO dump, with the
    fused computations' root opcodes recorded for fusions (`fusion:<kind>`)."""
    found = {}
    for line in hlo_text.splitlines():
        match = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(", line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            kind = re.search(r"kind=(\w+)", line)
            opcode = match.group(3)
            if opcode == "fusion" and kind:
                opcode = f"fusion:{kind.group(1)}"
            shape = match.group(2).split("{")[0]
            found[match.group(1)] = (shape, op_name.group(1) if op_name else "", opcode)
    return found


def op_times(trace_file: pathlib.Path) -> tuple[dict[str, float], dict[str, int]]:
    """({event name: total microseconds}, {event name: count}) of the trace's complete events."""
    events = json.load(gzip.open(trace_file))["traceEvents"]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            total[event["name"]] += event["dur"]
            count[event["name"]] += 1
    return total, count


def thread_concurrency(trace_file: pathlib.Path) -> float:
    """Average number of XLA threads running an op (thunk) during the traced steps."""
    events = json.load(gzip.open(trace_file))["traceEvents"]
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    spans: dict = collections.defaultdict(list)
    for e in events:
        if (
            e.get("ph") == "X"
            and "dur" in e
            and e["name"].startswith("ThunkExecutor::Execute")
            and "wait" not in e["name"]
            and "XLAEigen" in names.get((e["pid"], e.get("tid")), "")
        ):
            spans[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    if not spans:
        return float("nan")
    busy = 0.0
    for intervals in spans.values():  # union of each thread's (possibly nested) spans
        intervals.sort()
        end = -1.0
        for start, stop in intervals:
            if stop > end:
                busy += stop - max(start, end)
                end = stop
    everything = [t for intervals in spans.values() for pair in intervals for t in pair]
    return busy / max(max(everything) - min(everything), 1e-9)


def group_label(op_name: str) -> str:
    """`fwd|bwd|opt <module path>/<primitive>` with layer numbers folded."""
    if not op_name:
        return ""
    phase = "bwd" if "transpose(" in op_name else "fwd"
    if "AlexaTM" not in op_name:
        phase = "opt"
    label = op_name.split("jit(train_step)/")[-1]
    label = re.sub(r"(transpose\(|jvp\(|\))", "", label)
    label = re.sub(r"^.*?AlexaTM/", "", label)
    label = re.sub(r"layers_\d+", "layers_*", label)
    return f"{phase} {label}"


def op_kind(opcode: str, name: str, op_name: str) -> str:
    """A coarse class for the second table, from the thunk's name (XLA names a fusion after
    its root ops: `ynn_fusion` = a matmul handed to YNNPACK, `copy_*`/`transpose_*` = layout
    changes, ...) and its op_name."""
    base = re.sub(r"\.\d+$", "", name)
    if "threefry" in op_name or "_bernoulli" in op_name or "random_bits" in op_name:
        return "random bits (dropout masks)"
    if base.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn")) or opcode == "dot":
        return "matmul (dot / ynn_fusion)"
    if base.startswith(("copy", "transpose", "bitcast_copy")):
        return "copy / transpose fusion"
    if "reduce" in base:
        return "reduction"
    if base == "while":
        return "while loop"
    return "other fusion / op"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="train_profile_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_dump_to={out}/hlo --xla_dump_hlo_module_re=train_step"
    )
    monitor = LoadMonitor()
    import jax

    if args.num_cpu_devices > 1:  # before the first JAX computation
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    import train_step as bench

    bench_args = bench.parse_args(
        [
            "--gin_file",
            args.gin_file,
            "--batch",
            str(args.batch),
            "--input_len",
            str(args.input_len),
            "--target_len",
            str(args.target_len),
            "--no_reference",
        ]
        + sum((["--gin_param", p] for p in args.gin_param), [])
    )
    cfg = bench.load_model_config(bench_args)
    host_batch = bench.synthetic_batch(cfg, args.batch, args.input_len, args.target_len)
    trainer = bench.OurTrainer(cfg, host_batch, bench_args.rules)
    for _ in range(args.warmup):
        trainer.step()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    wall = (time.perf_counter() - start) / args.steps
    with jax.profiler.trace(str(out / "trace")):
        for _ in range(args.steps):
            trainer.step()

    dumps = sorted((out / "hlo").glob("*train_step*after_optimizations.txt"))
    traces = sorted((out / "trace").rglob("*.trace.json.gz"))
    if not dumps or not traces:
        raise SystemExit(f"no HLO dump or trace found under {out}")
    instructions = {}
    for dump in dumps:
        instructions.update(hlo_instructions(dump.read_text()))
    totals, _ = op_times(traces[-1])
    busy_threads = thread_concurrency(traces[-1])
    groups: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    shapes: dict[str, str] = {}
    thunks: dict[str, tuple[float, str, str]] = {}
    for name, micros in totals.items():
        if name not in instructions:
            continue
        shape, op_name, opcode = instructions[name]
        ms = micros / 1e3 / args.steps
        label = group_label(op_name) or f"{opcode} {shape}"
        groups[label] += ms
        shapes.setdefault(label, shape)
        kinds[op_kind(opcode, name, op_name)] += ms
        if args.top_thunks:
            thunks[name] = (ms, shape, op_name)
    total = sum(groups.values())
    load = monitor.finish(cores_used=os.cpu_count())
    print(
        f"{cfg.d_model=} layers {cfg.num_encoder_layers}+{cfg.num_decoder_layers} vocab "
        f"{cfg.vocab_size} dropout {cfg.dropout_rate}; batch {args.batch} x "
        f"({args.input_len} + {args.target_len}) on {jax.device_count()} device(s): "
        f"{wall:.2f} s per step (wall clock), {total / 1e3:.2f} s per step in ops (profiled); "
        f"on average {busy_threads:.2f} XLA threads busy while the step ran"
    )
    print(monitor.describe(load))
    print(f"{'ms/step':>9}  {'share':>6}  {'result shape':<28} op")
    for label, ms in groups.most_common(args.top):
        print(f"{ms:9.1f}  {ms / total:6.1%}  {shapes[label][:28]:<28} {label[:110]}")
    print(f"\n{'ms/step':>9}  {'share':>6}  kind of op")
    for kind, ms in kinds.most_common():
        print(f"{ms:9.1f}  {ms / total:6.1%}  {kind}")
    if args.top_thunks:
        print(f"\n{'ms/step':>9}  {'thunk':<32} {'result shape':<28} op_name")
        for name, (ms, shape, op_name) in sorted(thunks.items(), key=lambda kv: -kv[1][0])[
            : args.top_thunks
        ]:
            print(f"{ms:9.1f}  {name:<32} {shape[:28]:<28} {op_name[-80:]}")
    print(f"trace and HLO dump: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
