"""Where the time of one greedy decode step goes, per XLA op, on this machine (no reference needed).

    python benchmarks/decode_profile.py --batch 16 --top 25

Builds a random model (default: the shape `benchmarks/decode.py` uses, tied embeddings),
runs `greedy_or_sample` for `--new_tokens` steps once to compile, then once under the JAX
profiler. Every op that ran exactly `new_tokens - 1` times belongs to the while-loop body; their
durations are summed per HLO `op_name` (layer numbers folded into `layers_*`, so one row covers
all layers) and printed as ms per step, largest first, with the instruction's result shape. The
HLO is dumped next to the trace (`--out`) for a closer look. Single-threaded like decode.py's
default. Profiling adds a little overhead per op, so the total is a bit above the wall time
per step, which is printed too.
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

from machine_load import LoadMonitor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input_len", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=64, help="decode steps")
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument(
        "--untied",
        action="store_true",
        help="separate LM head matrix (AlexaTM 20B) instead of tied embeddings",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute and parameter dtype",
    )
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--out", help="directory for the trace and HLO dump (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("batch", "input_len", "d_model", "layers", "heads", "ffn", "vocab", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.new_tokens < 2:
        parser.error("--new_tokens must be >= 2 (the loop body runs new_tokens - 1 times)")
    if args.d_model % args.heads:
        parser.error(f"--d_model {args.d_model} must be divisible by --heads {args.heads}")
    return args


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (result shape, op_name metadata or the opcode)} of an HLO dump."""
    found = {}
    for line in hlo_text.splitlines():
        match = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            shape = match.group(2).split("{")[0]
            # Ops without metadata (e.g. the attention products) are told apart by shape.
            found[match.group(1)] = (
                shape,
                op_name.group(1) if op_name else f"{match.group(3)} {shape} (no op_name)",
            )
    return found


def loop_op_times(trace_file: pathlib.Path, repeats: int) -> dict[str, float]:
    """{op name: total microseconds} of the ops that ran exactly `repeats` times in the trace."""
    events = json.load(gzip.open(trace_file))["traceEvents"]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[event["name"]] += event["dur"]
            count[event["name"]] += 1
    return {name: total[name] for name in total if count[name] == repeats}


def group_label(op_name: str) -> str:
    """op_name without the jit/while/method prefix and with layer numbers folded."""
    label = re.sub(r"^AlexaTM\.\w+/", "", op_name.split("while/body/")[-1])
    return re.sub(r"layers_\d+", "layers_*", label)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    monitor = LoadMonitor()
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="decode_profile_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen=false --xla_dump_to={out}/hlo"
    )
    sys.path.insert(0, str(REPO_ROOT))
    import jax
    import numpy as np

    from alexatm_jax.decoding import DecodeOptions, greedy_or_sample, model_steps
    from alexatm_jax.model import ModelConfig
    from alexatm_jax.model.params import init_params

    config = ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        num_encoder_heads=args.heads,
        num_decoder_heads=args.heads,
        encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn,
        max_positions=max(args.input_len, args.new_tokens),
        dropout_rate=0.0,
        tie_word_embeddings=not args.untied,
        share_embeddings=not args.untied,
        dtype=args.dtype,
        param_dtype=args.dtype,
    )
    params = init_params(config, jax.random.key(0))
    head = model_steps.output_head(config, params)
    prompts = np.random.default_rng(0).integers(
        2, args.vocab, (args.batch, args.input_len), dtype=np.int32
    )
    segments = np.ones_like(prompts)

    def generate(steps: int) -> None:
        options = DecodeOptions(max_new_tokens=steps, bad_words=((config.eos_token_id,),))
        np.asarray(
            greedy_or_sample(
                params,
                prompts,
                segments,
                jax.random.key(0),
                config=config,
                options=options,
                head=head,
            ).tokens
        )

    generate(args.new_tokens)  # compile (and dump the HLO)
    generate(1)
    wall = {}
    for steps in (args.new_tokens, 1):
        start = time.perf_counter()
        generate(steps)
        wall[steps] = time.perf_counter() - start
    with jax.profiler.trace(str(out / "trace")):
        generate(args.new_tokens)

    dumps = sorted((out / "hlo").glob("*jit__greedy_or_sample*after_optimizations.txt"))
    traces = sorted((out / "trace").rglob("*.trace.json.gz"))
    if not dumps or not traces:
        raise SystemExit(
            f"no HLO dump or trace found under {out}: is the profiler plugin "
            "available in this jax build?"
        )
    instructions = hlo_instructions(dumps[0].read_text())
    groups: collections.Counter = collections.Counter()
    shapes: dict[str, str] = {}
    for name, micros in loop_op_times(traces[-1], args.new_tokens - 1).items():
        shape, op_name = instructions.get(name, ("?", name))
        label = group_label(op_name)
        groups[label] += micros / 1e3 / (args.new_tokens - 1)
        shapes.setdefault(label, shape)
    step_ms = (wall[args.new_tokens] - wall[1]) / (args.new_tokens - 1) * 1e3
    print(
        f"batch {args.batch}, {config.num_decoder_layers} decoder layers, vocab {args.vocab}, "
        f"{args.dtype}: {step_ms:.2f} ms per step (wall clock), {sum(groups.values()):.2f} ms "
        f"per step in {len(groups)} op groups (profiled)"
    )
    print(f"{'ms/step':>8}  {'share':>6}  {'result shape':<22} op")
    total = sum(groups.values())
    for label, ms in groups.most_common(args.top):
        print(f"{ms:8.3f}  {ms / total:6.1%}  {shapes[label]:<22} {label}")
    print(LoadMonitor.describe(monitor.finish(cores_used=1)))
    print(f"trace and HLO dump: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
