"""`alexatm-plan`: will a gin-configured training job fit, and how fast could it run?

    alexatm-plan --gin_file gin/experiments/alexatm_20b_v5p256.gin --devices 128 \\
        --peak_tflops 459 --mfu 0.45 --device_memory_gib 95 [--gin.KEY=VALUE ...] \\
        [--extrapolate_from_layers 2] [--format text|json] [--json_out plan.json]

Emulates N CPU devices, compiles the job's train step ahead of time against abstract arrays
(nothing is allocated) and reports per-device memory, FLOPs per step and the step time implied
by a peak FLOP/s and an MFU. See `alexatm_jax.planning` for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any, Sequence
from alexatm_jax.cli.gin_flags import gin_bindings

if TYPE_CHECKING:  # importing planning imports JAX, which must wait for emulate_cpu_devices
    from alexatm_jax.planning import Plan, TrainJob

GIB = 2**30
CPU_BACKEND_NOTE = (
    "Compiled buffer sizes come from XLA:CPU's buffer assignment of the partitioned step, not "
    "from the TPU/GPU compiler: fusion, layouts, scheduling and rematerialisation differ there, "
    "so real temporaries can be smaller or larger. Parameter, optimizer-state and batch bytes "
    "are exact.")
SCAN_FLOPS_NOTE = (
    "XLA's cost analysis visits each while-loop body once: with scan_layers every layer stack "
    "counts as one layer, so the XLA figure is not a step total. The traced matmul FLOPs "
    "multiply scan bodies by their length and include remat recomputation.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (gin bindings `--gin.KEY=VALUE` are taken from the leftovers)."""
    parser = argparse.ArgumentParser(
        prog="alexatm-plan",
        description="Compile a gin-configured train step ahead of time on N emulated CPU devices "
                    "and report per-device memory, FLOPs per step and the predicted step time. "
                    "Extra arguments --gin.KEY=VALUE are gin bindings applied after the files, "
                    "e.g. --gin.MESH_FSDP=64 --gin.BATCH_SIZE=1024.",
        epilog="XLA's C++ warnings (e.g. SPMD resharding notes) are hidden; set "
               "TF_CPP_MIN_LOG_LEVEL=0 to see them.")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repeatable), e.g. gin/experiments/alexatm_20b_v5p256.gin")
    parser.add_argument("--gin_search_path", action="append", default=[],
                        help="extra directory to search for gin files and their includes")
    parser.add_argument("--devices", type=int, required=True,
                        help="number of devices to plan for (emulated on the CPU); the mesh "
                             "sizes of the gin files must multiply to it (-1 takes the rest)")
    parser.add_argument("--extrapolate_from_layers", type=int, default=None, metavar="K",
                        help="compile with (K,K), (2K,K) and (K,2K) encoder/decoder layers and "
                             "extrapolate linearly to the configured depth (faster for deep "
                             "unscanned models; the report marks extrapolated numbers). Use "
                             "K >= 2: a one-layer stack compiles differently")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="peak dense TFLOP/s of one target device (bf16: TPU v5p 459, "
                             "v4 275, H100 989, A100 312); needed for the step time")
    parser.add_argument("--mfu", type=float, default=0.45,
                        help="assumed model FLOPs utilisation in (0, 1] (default 0.45; the paper "
                             "reports up to 49%% on A100s)")
    parser.add_argument("--device_memory_gib", type=float, default=None,
                        help="memory of one target device in GiB (TPU v5p 95, v4 32, H100 80): "
                             "the report then says whether the compiled step fits")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="what to print on stdout (default text)")
    parser.add_argument("--json_out", default=None, help="also write the JSON report here")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parsed options and gin bindings; exits with a usage error naming what was wrong."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.BATCH_SIZE=1024")
    if not args.gin_file:
        parser.error("give at least one --gin_file, e.g. "
                     "--gin_file=gin/experiments/alexatm_20b_v5p256.gin")
    if args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    if args.extrapolate_from_layers is not None and args.extrapolate_from_layers < 1:
        parser.error(f"--extrapolate_from_layers must be >= 1, got {args.extrapolate_from_layers}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak_tflops must be > 0, got {args.peak_tflops}")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.device_memory_gib is not None and args.device_memory_gib <= 0:
        parser.error(f"--device_memory_gib must be > 0, got {args.device_memory_gib}")
    return args, bindings


def emulate_cpu_devices(num_devices: int) -> None:
    """Make JAX run on `num_devices` CPU devices (whatever accelerators the machine has); must
    run before anything initialises JAX. Raises RuntimeError if JAX was initialised already."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    jax.config.update("jax_num_cpu_devices", num_devices)
    if jax.device_count() != num_devices:
        raise RuntimeError(f"JAX was initialised before alexatm-plan could ask for "
                           f"{num_devices} CPU devices (it has {jax.device_count()}); run "
                           "alexatm-plan in a fresh process")


def parse_gin_config(files: Sequence[str], bindings: Sequence[str],
                     search_paths: Sequence[str]) -> None:
    """Parse the gin files; the SeqIO task registry is imported only if the files bind it."""
    from alexatm_jax import gin_registry

    try:
        gin_registry.parse_gin(files, bindings, search_paths)
    except ValueError as error:
        if "No configurable matching" not in str(error):
            raise
        import tasks  # noqa: F401  (registers the data configurables, imports TensorFlow)
        gin_registry.parse_gin(files, bindings, search_paths)


def train_job_from_gin() -> "TrainJob":
    """The TrainJob of the parsed gin configuration: `train`'s bindings over its defaults."""
    import inspect

    import gin

    from alexatm_jax.planning import TrainJob
    from alexatm_jax.training import trainer

    values = {name: p.default for name, p in inspect.signature(trainer.train).parameters.items()
              if p.default is not inspect.Parameter.empty}
    values.update(gin.get_bindings("train"))
    missing = [name for name in ("model_config", "batch_size", "train_steps") if name not in values]
    if missing:
        raise ValueError(f"the gin files bind no train.{', train.'.join(missing)}: include a run "
                         "file such as gin/runs/pretrain.gin and a model file")
    return TrainJob(
        model_config=values["model_config"], mesh_config=values["mesh_config"],
        rules=values["rules"], batch_size=int(values["batch_size"]),
        sequence_length={k: int(v) for k, v in values["sequence_length"].items()},
        optimizer_config=values["optimizer_config"], train_steps=int(values["train_steps"]),
        grad_accum_steps=int(values["grad_accum_steps"]), z_loss=float(values["z_loss"]))


def report(plan: "Plan", args: argparse.Namespace) -> dict[str, Any]:
    """The plan as a JSON-ready dict: bytes per device, FLOPs, step time, provenance notes."""
    job, compiled = plan.job, plan.compiled
    cfg = job.model_config
    depths = [list(d) for d in plan.compiled_depths]
    source = (f"extrapolated from compiles at (encoder, decoder) layers {depths}"
              if plan.extrapolated else f"measured: compiled at {depths[0]} layers")
    traced_source = (f"extrapolated from traces at {depths}" if plan.extrapolated
                     else f"traced at {depths[0]} layers")
    memory = {
        "params_bytes": plan.params_bytes,
        "optimizer_state_bytes": plan.optimizer_state_bytes,
        "batch_bytes": plan.batch_bytes,
        "compiled_argument_bytes": compiled.argument_bytes,
        "compiled_output_not_aliased_bytes": compiled.output_bytes - compiled.alias_bytes,
        "compiled_temp_bytes": compiled.temp_bytes,
        "compiled_generated_code_bytes": compiled.generated_code_bytes,
        "compiled_total_bytes": compiled.total_bytes,
        "analytic_source": "exact: shard shapes of the train state and batch",
        "compiled_source": source + " on XLA:CPU",
    }
    if args.device_memory_gib:
        memory["device_memory_bytes"] = args.device_memory_gib * GIB
        memory["fits"] = (None if plan.warnings
                          else compiled.total_bytes <= args.device_memory_gib * GIB)
    flops = {
        "model_flops_per_step": plan.model_flops_per_step,
        "model_flops_source": "analytic: alexatm_jax/training/flops.py (3 x forward matmuls)",
        "traced_matmul_flops_per_step": compiled.matmul_flops,
        "xla_flops_per_device": compiled.xla_flops_per_device,
        "xla_flops_all_devices": compiled.xla_flops_per_device * plan.num_devices,
        "traced_source": traced_source,
        "xla_source": source,
    }
    result = {
        "gin_files": list(args.gin_file),
        "devices": plan.num_devices, "emulated_device_kind": plan.device_kind,
        "mesh": plan.mesh_shape, "rules": plan.rules_name,
        "model": {"num_params": plan.num_params, "encoder_layers": cfg.num_encoder_layers,
                  "decoder_layers": cfg.num_decoder_layers, "d_model": cfg.d_model,
                  "vocab_size": cfg.vocab_size, "dtype": cfg.dtype,
                  "param_dtype": "float32", "scan_layers": cfg.scan_layers,
                  "remat_policy": cfg.remat_policy, "attention_impl": cfg.attention_impl},
        "batch": {"global_sequences": job.batch_size, "sequence_length": dict(job.sequence_length),
                  "sequences_per_batch_shard": job.batch_size // plan.batch_shards,
                  "grad_accum_steps": job.grad_accum_steps,
                  "positions_per_step": plan.positions_per_step,
                  "target_tokens_per_step": job.batch_size * job.sequence_length["targets"]},
        "train_steps": job.train_steps,
        "memory_per_device": memory, "flops": flops,
        "compiled_points": [
            {"encoder_layers": depth[0], "decoder_layers": depth[1],
             "argument_bytes": step.argument_bytes, "temp_bytes": step.temp_bytes,
             "total_bytes": step.total_bytes, "xla_flops_per_device": step.xla_flops_per_device,
             "traced_matmul_flops": step.matmul_flops}
            for depth, step in plan.compiled_points],
        "compile_seconds": plan.compile_seconds,
        "warnings": list(plan.warnings),
        "notes": [CPU_BACKEND_NOTE] + ([SCAN_FLOPS_NOTE] if cfg.scan_layers else []),
    }
    if args.peak_tflops:
        seconds = plan.step_time_s(args.peak_tflops * 1e12, args.mfu)
        result["step_time"] = {
            "peak_tflops_per_device": args.peak_tflops, "mfu": args.mfu,
            "seconds_per_step": seconds,
            "positions_per_second": plan.positions_per_step / seconds,
            "days_for_train_steps": seconds * job.train_steps / 86400,
            "formula": "model_flops_per_step / (devices * peak_tflops * 1e12 * mfu)"}
    return result


def _size(num_bytes: float) -> str:
    """`num_bytes` as a right-aligned GiB / MiB / KiB figure."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:9.2f} {unit}"
    return f"{num_bytes / 2**10:9.2f} KiB"


def _duration(days: float) -> str:
    return f"{days:.1f} days" if days >= 1 else f"{days * 24:.2f} hours"


def format_text(result: dict[str, Any]) -> str:
    """A human-readable rendering of `report(...)`."""
    model, batch, mem, flops = (result["model"], result["batch"], result["memory_per_device"],
                                result["flops"])
    lengths = batch["sequence_length"]
    mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
    lines = [
        f"alexatm-plan: {' + '.join(result['gin_files'])}",
        f"  devices    {result['devices']} (emulated {result['emulated_device_kind']}), "
        f"mesh {mesh}, rules '{result['rules']}'",
        f"  model      {model['num_params'] / 1e9:.3f}B parameters, {model['encoder_layers']} + "
        f"{model['decoder_layers']} layers, d_model {model['d_model']}, vocab "
        f"{model['vocab_size']}; compute {model['dtype']}, params float32, scan_layers="
        f"{model['scan_layers']}, remat '{model['remat_policy']}', attention "
        f"'{model['attention_impl']}'",
        f"  batch      {batch['global_sequences']} sequences x ({lengths['inputs']} inputs + "
        f"{lengths['targets']} targets) = {batch['positions_per_step']:,} positions "
        f"({batch['target_tokens_per_step']:,} target tokens) per step",
        f"             {batch['sequences_per_batch_shard']} sequences per batch shard, "
        f"grad_accum_steps {batch['grad_accum_steps']}",
        "",
        "Per-device memory",
        f"  parameters (float32)            {_size(mem['params_bytes'])}   {mem['analytic_source']}",
        f"  optimizer state                 {_size(mem['optimizer_state_bytes'])}   same",
        f"  batch                           {_size(mem['batch_bytes'])}   same",
        f"  compiled arguments              {_size(mem['compiled_argument_bytes'])}   "
        f"{mem['compiled_source']}",
        f"  compiled outputs (not donated)  {_size(mem['compiled_output_not_aliased_bytes'])}",
        f"  compiled temporaries            {_size(mem['compiled_temp_bytes'])}",
        f"  compiled generated code         {_size(mem['compiled_generated_code_bytes'])}",
        f"  compiled total                  {_size(mem['compiled_total_bytes'])}",
    ]
    if "fits" in mem:
        share = f"{100 * mem['compiled_total_bytes'] / mem['device_memory_bytes']:.0f}%"
        verdict = {True: f"fits ({share} of the device)",
                   False: f"DOES NOT FIT ({share} of the device)",
                   None: "unknown: see the warning below"}[mem["fits"]]
        lines.append(f"  device memory                   {_size(mem['device_memory_bytes'])}   "
                     f"{verdict}")
    lines += [
        "",
        "FLOPs per step",
        f"  model FLOPs (analytic)          {flops['model_flops_per_step']:10.4g}   "
        f"{flops['model_flops_source']}",
        f"  traced matmul FLOPs             {flops['traced_matmul_flops_per_step']:10.4g}   "
        f"incl. remat recomputation; {flops['traced_source']}",
        f"  XLA cost analysis, per device   {flops['xla_flops_per_device']:10.4g}   "
        f"x {result['devices']} devices = {flops['xla_flops_all_devices']:.4g}; "
        f"{flops['xla_source']}",
    ]
    if "step_time" in result:
        step = result["step_time"]
        lines += [
            "",
            f"Step time at {step['peak_tflops_per_device']:g} TFLOP/s per device and MFU "
            f"{step['mfu']:g} ({step['formula']})",
            f"  {step['seconds_per_step']:.3f} s/step, {step['positions_per_second']:,.0f} "
            f"positions/s, {_duration(step['days_for_train_steps'])} for "
            f"{result['train_steps']:,} steps",
        ]
    else:
        lines += ["", "Step time: give --peak_tflops (and --mfu) to predict it"]
    if len(result["compiled_points"]) > 1:
        lines += ["", "Compiled points (per device)"]
        lines += [f"  {p['encoder_layers']:3d} + {p['decoder_layers']:<3d} layers: temporaries "
                  f"{_size(p['temp_bytes'])}, total {_size(p['total_bytes'])}, traced matmul "
                  f"FLOPs {p['traced_matmul_flops']:.4g}" for p in result["compiled_points"]]
    lines += ["", f"Compile time here: {result['compile_seconds']:.0f} s"]
    lines += [f"WARNING: {warning}" for warning in result["warnings"]]
    lines += ["Notes:"]
    lines += [f"  - {note}" for note in result["notes"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-plan`; returns the exit status."""
    args, bindings = parse_args(argv)
    try:
        emulate_cpu_devices(args.devices)
    except RuntimeError as error:
        print(f"alexatm-plan: error: {error}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from alexatm_jax.planning import make_plan

    try:
        parse_gin_config(args.gin_file, bindings, args.gin_search_path)
        job = train_job_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"alexatm-plan: error: gin configuration: {error}", file=sys.stderr)
        return 2
    stages = 3 * (1 if args.extrapolate_from_layers is None else 3)
    with tqdm(total=stages, desc="plan", unit="stage", file=sys.stderr) as bar:
        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)
        try:
            plan = make_plan(job, extrapolate_from_layers=args.extrapolate_from_layers,
                             progress=progress)
        except ValueError as error:
            print(f"alexatm-plan: error: {error}", file=sys.stderr)
            return 2
    result = report(plan, args)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    if args.json_out:
        path = pathlib.Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"alexatm-plan: JSON report written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
