"""`alexatm-plan`: will a gin-configured training job fit, and how fast could it run?

    alexatm-plan --gin_file gin/experiments/alexatm_20b_v5p256.gin --topology v5p-256 \\
        [--timing_layers 2 | --no_step_time] [--gin.KEY=VALUE ...] [--format text|json]
    alexatm-plan --gin_file gin/experiments/alexatm_20b_v5p256.gin --devices 128 \\
        --peak_tflops 459 --mfu 0.45 --device_memory_gib 95 [--gin.KEY=VALUE ...] \\
        [--extrapolate_from_layers 2] [--format text|json] [--json_out plan.json]

With --topology the TPU compiler (libtpu, on this CPU) compiles the job's train step for the
compile-only devices of a TPU slice: per-chip memory is the TPU's own buffer assignment, and the
step time is the TPU cost model's. With --devices it emulates N CPU devices and compiles with
XLA:CPU; the step time then follows from a peak FLOP/s and an assumed MFU. Nothing is allocated
either way. See `alexatm_jax.planning` for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any, Sequence
from alexatm_jax.cli.gin_flags import gin_bindings

if TYPE_CHECKING:  # importing planning imports JAX, which must wait for emulate_cpu_devices
    from alexatm_jax.planning import Plan, StepTimeEstimate
    from alexatm_jax.training.config import TrainConfig

GIB = 2**30
PLAN_MODEL_DIR_BINDING = "MODEL_DIR = ''"
TPU_BACKEND_NOTE = (
    "Compiled buffer sizes are the TPU compiler's (libtpu) buffer assignment of the partitioned "
    "step for these chips. The step time is its cost model (cost_analysis()['optimal_seconds']), "
    "not a measurement: it models compute and memory traffic, and may not see every "
    "interconnect stall or host delay.")
GPU_BACKEND_NOTE = (
    "Compiled buffer sizes are XLA:GPU's buffer assignment of the partitioned step for these "
    "GPUs (compiled on this CPU, with no GPU to autotune on). NCCL buffers and cuBLAS/cuDNN workspaces "
    "are allocated at run time and are not in it: keep headroom.")
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
        description="Compile a gin-configured train step ahead of time, with the TPU compiler "
                    "for a TPU slice (--topology) or XLA:CPU on N emulated devices (--devices), "
                    "and report per-device memory, FLOPs per step and the step time. "
                    "Extra arguments --gin.KEY=VALUE are gin bindings applied after the files, "
                    "e.g. --gin.MESH_FSDP=64 --gin.BATCH_SIZE=1024.",
        epilog="XLA's C++ warnings (e.g. SPMD resharding notes) are hidden; set "
               "TF_CPP_MIN_LOG_LEVEL=0 to see them.")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repeatable), e.g. gin/experiments/alexatm_20b_v5p256.gin")
    parser.add_argument("--gin_search_path", action="append", default=[],
                        help="extra directory to search for gin files and their includes")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--devices", type=int, default=None,
                        help="number of devices to plan for (emulated on the CPU, compiled by "
                             "XLA:CPU); the mesh sizes of the gin files must multiply to it "
                             "(-1 takes the rest)")
    target.add_argument("--topology", default=None, metavar="NAME",
                        help="compile with the TPU compiler for a TPU slice: a Cloud TPU type "
                             "(v4-8 ... v4-4096, v5p-8 ... v5p-12288, v5litepod-N, v6e-N) or a "
                             "topology such as v5p:4x4x8; needs libtpu "
                             "(pip install -e '.[tpu-aot]'). Or h100-NODESxGPUS (e.g. h100-16x8): "
                             "XLA:GPU, memory only, needs the CUDA plugin ('.[gpu-aot]')")
    parser.add_argument("--timing_layers", type=int, default=2, metavar="K",
                        help="with --topology: the step time comes from the TPU cost model of "
                             "the layers compiled unscanned at (K,K), (2K,K), (K,2K) encoder/"
                             "decoder layers, one microbatch, extrapolated (default 2)")
    parser.add_argument("--no_step_time", action="store_true",
                        help="with --topology: skip the step-time compiles (memory only)")
    parser.add_argument("--extrapolate_from_layers", type=int, default=None, metavar="K",
                        help="compile with (K,K), (2K,K) and (K,2K) encoder/decoder layers and "
                             "extrapolate linearly to the configured depth (faster for deep "
                             "unscanned models; the report marks extrapolated numbers). Use "
                             "K >= 2: a one-layer stack compiles differently")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="peak dense TFLOP/s of one target device (bf16: TPU v5p 459, "
                             "v4 275, H100 989, A100 312); needed for the step time")
    parser.add_argument("--mfu", type=float, default=None,
                        help="with --devices: assumed model FLOPs utilisation in (0, 1] (default "
                             "0.45; the paper reports up to 49%% on A100s)")
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
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    args.target = None
    if args.topology is not None:
        from alexatm_jax.gpu_topology import parse_gpu_target
        from alexatm_jax.tpu_topology import parse_tpu_target

        try:
            args.target = parse_gpu_target(args.topology) or parse_tpu_target(args.topology)
        except ValueError as error:
            parser.error(f"--topology: {error}")
        if args.mfu is not None:
            parser.error("--mfu assumes an MFU; with --topology the TPU compiler's cost model "
                         "estimates the step time: drop --mfu")
        if args.timing_layers < 1:
            parser.error(f"--timing_layers must be >= 1, got {args.timing_layers}")
        args.peak_tflops = args.peak_tflops or args.target.peak_bf16_tflops
        args.device_memory_gib = args.device_memory_gib or args.target.hbm_gib
    args.mfu = 0.45 if args.mfu is None else args.mfu
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
    """Parse the gin files; the SeqIO task registry is imported only if the files bind it.

    A plan writes nothing, so a required MODEL_DIR the files leave unset is bound to '' (the
    user's bindings still win)."""
    from alexatm_jax import gin_registry

    with_model_dir = [PLAN_MODEL_DIR_BINDING, *bindings]
    try:
        gin_registry.parse_gin(files, with_model_dir, search_paths)
    except ValueError as error:
        if "sets the macro MODEL_DIR" in str(error):  # the files do not use MODEL_DIR
            gin_registry.parse_gin(files, bindings, search_paths)
        elif "No configurable matching" in str(error):
            import tasks  # noqa: F401  (registers the data configurables, imports TensorFlow)
            gin_registry.parse_gin(files, with_model_dir, search_paths)
        else:
            raise


def train_config_from_gin() -> "TrainConfig":
    """The TrainConfig of the parsed gin configuration."""
    from alexatm_jax import gin_registry

    return gin_registry.train_config_from_gin()


def report(plan: "Plan", args: argparse.Namespace,
           estimate: "StepTimeEstimate | None" = None) -> dict[str, Any]:
    """The plan as a JSON-ready dict: bytes per device, FLOPs, step time, provenance notes."""
    job, cfg = plan.config, plan.config.model_config
    compiled_source, traced_source = _compile_sources(plan)
    result = {
        "gin_files": list(args.gin_file),
        "devices": plan.num_devices, "device_kind": plan.device_kind, "platform": plan.platform,
        "mesh": plan.mesh_shape, "rules": plan.rules_name,
        "model": _model_report(plan), "batch": _batch_report(plan),
        "train_steps": job.train_steps,
        "memory_per_device": _memory_report(plan, args, compiled_source),
        "flops": _flops_report(plan, compiled_source, traced_source),
        "compiled_points": [
            {"encoder_layers": depth[0], "decoder_layers": depth[1],
             "argument_bytes": step.argument_bytes, "temp_bytes": step.temp_bytes,
             "total_bytes": step.total_bytes, "xla_flops_per_device": step.xla_flops_per_device,
             "traced_matmul_flops": step.matmul_flops}
            for depth, step in plan.compiled_points],
        "compile_seconds": plan.compile_seconds,
        "warnings": list(plan.warnings),
        "notes": [{"tpu": TPU_BACKEND_NOTE, "gpu": GPU_BACKEND_NOTE}.get(plan.platform,
                                                                          CPU_BACKEND_NOTE)]
                 + list(getattr(args, "target_notes", []))
                 + ([SCAN_FLOPS_NOTE] if cfg.scan_layers else []) + _attention_notes(plan),
    }
    if args.target is not None:
        result["target"] = args.target.describe()
        if estimate is not None:
            result["step_time"] = cost_model_step_time(plan, estimate, args.peak_tflops)
    elif args.peak_tflops:
        result["step_time"] = _assumed_mfu_step_time(plan, args.peak_tflops, args.mfu)
    return result


def _compile_sources(plan: "Plan") -> tuple[str, str]:
    """Where the compiled and the traced figures come from: (compiled source, traced source)."""
    depths = [list(d) for d in plan.compiled_depths]
    source = (f"extrapolated from compiles at (encoder, decoder) layers {depths}"
              if plan.extrapolated else f"measured: compiled at {depths[0]} layers")
    traced_source = (f"extrapolated from traces at {depths}" if plan.extrapolated
                     else f"traced at {depths[0]} layers")
    return source, traced_source


def _model_report(plan: "Plan") -> dict[str, Any]:
    """The model's size, depth and compute settings."""
    cfg = plan.config.model_config
    return {"num_params": plan.num_params, "encoder_layers": cfg.num_encoder_layers,
            "decoder_layers": cfg.num_decoder_layers, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "dtype": cfg.dtype,
            "param_dtype": "float32", "scan_layers": cfg.scan_layers,
            "remat_policy": cfg.remat_policy, "attention_impl": cfg.attention_impl}


def _batch_report(plan: "Plan") -> dict[str, Any]:
    """The global batch: sequences, lengths, positions and target tokens per step."""
    job = plan.config
    return {"global_sequences": job.batch_size, "sequence_length": dict(job.sequence_length),
            "sequences_per_batch_shard": job.batch_size // plan.batch_shards,
            "grad_accum_steps": job.grad_accum_steps,
            "positions_per_step": plan.positions_per_step,
            "target_tokens_per_step": job.batch_size * job.sequence_length["targets"]}


def _memory_report(plan: "Plan", args: argparse.Namespace, source: str) -> dict[str, Any]:
    """Bytes per device, analytic and compiled, and whether they fit --device_memory_gib."""
    compiled = plan.compiled
    compiler = {"tpu": "the TPU compiler (libtpu)", "gpu": "XLA:GPU"}.get(plan.platform, "XLA:CPU")
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
        "compiled_source": f"{source} by {compiler}",
    }
    if args.device_memory_gib:
        memory["device_memory_bytes"] = args.device_memory_gib * GIB
        memory["fits"] = (None if plan.warnings
                          else compiled.total_bytes <= args.device_memory_gib * GIB)
    return memory


def _flops_report(plan: "Plan", source: str, traced_source: str) -> dict[str, Any]:
    """FLOPs per step: analytic model FLOPs, traced matmul FLOPs and XLA's cost analysis."""
    compiled = plan.compiled
    return {
        "model_flops_per_step": plan.model_flops_per_step,
        "model_flops_source": "analytic: alexatm_jax/training/flops.py (3 x forward matmuls)",
        "traced_matmul_flops_per_step": compiled.matmul_flops,
        "xla_flops_per_device": compiled.xla_flops_per_device,
        "xla_flops_all_devices": compiled.xla_flops_per_device * plan.num_devices,
        "traced_source": traced_source,
        "xla_source": source,
    }


def _assumed_mfu_step_time(plan: "Plan", peak_tflops: float, mfu: float) -> dict[str, Any]:
    """Step time in seconds from the model FLOPs at `peak_tflops` per device and an assumed MFU."""
    seconds = plan.step_time_s(peak_tflops * 1e12, mfu)
    return {
        "peak_tflops_per_device": peak_tflops, "mfu": mfu,
        "seconds_per_step": seconds,
        "positions_per_second": plan.positions_per_step / seconds,
        "days_for_train_steps": seconds * plan.config.train_steps / 86400,
        "formula": "model_flops_per_step / (devices * peak_tflops * 1e12 * mfu)"}


def _attention_notes(plan: "Plan") -> list[str]:
    from alexatm_jax.planning import planned_model_config

    impl = plan.config.model_config.attention_impl
    planned = planned_model_config(plan.config.model_config, plan.platform).attention_impl
    if planned == impl == "splash":
        return ["the splash kernels' q.k and p.v products run inside Pallas calls: the traced "
                "matmul FLOPs leave them out (the model FLOPs and the cost model count them)"]
    if planned == impl:
        return []
    return [f"attention_impl '{impl}' does not exist on {plan.platform}: planned as '{planned}', "
            "which materialises the attention scores (an upper bound on memory)"]


def cost_model_step_time(plan: "Plan", estimate: "StepTimeEstimate",
                         peak_tflops: float) -> dict[str, Any]:
    """The TPU cost model's step time, the MFU it implies and how it was derived."""
    job = plan.config
    seconds = estimate.seconds
    depths = [list(depth) for depth, _ in estimate.points]
    how = (f"optimal_seconds of one microbatch ({job.batch_size // estimate.microbatches} "
           f"sequences), layers unscanned, compiled at (encoder, decoder) layers {depths}"
           + (f", extrapolated linearly to {list(job.depths)}" if estimate.extrapolated else "")
           + (f", x {estimate.microbatches} microbatches" if estimate.microbatches > 1 else "")
           + (f"; + {estimate.uncosted_kernel_seconds:.3f} s for the splash kernels' matmuls at "
              "peak FLOP/s, which the cost model does not cost (a lower bound on their time)"
              if estimate.uncosted_kernel_seconds else ""))
    return {
        "source": "the TPU compiler's cost model (cost_analysis()['optimal_seconds']), "
                  "not a measurement",
        "method": how,
        "seconds_per_step": seconds,
        "peak_tflops_per_device": peak_tflops,
        "implied_mfu": estimate.mfu(plan.model_flops_per_step, plan.num_devices,
                                    peak_tflops * 1e12),
        "positions_per_second": plan.positions_per_step / seconds,
        "days_for_train_steps": seconds * job.train_steps / 86400,
        "timing_points": [{"encoder_layers": d[0], "decoder_layers": d[1],
                           "optimal_seconds": t} for d, t in estimate.points],
        "timing_compile_seconds": estimate.compile_seconds,
        "uncosted_kernel_seconds": estimate.uncosted_kernel_seconds,
    }


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
    lines = (_header_lines(result) + [""] + _memory_lines(result["memory_per_device"]) + [""]
             + _flops_lines(result) + [""] + _step_time_lines(result))
    if len(result["compiled_points"]) > 1:
        lines += ["", "Compiled points (per device)"]
        lines += [f"  {p['encoder_layers']:3d} + {p['decoder_layers']:<3d} layers: temporaries "
                  f"{_size(p['temp_bytes'])}, total {_size(p['total_bytes'])}, traced matmul "
                  f"FLOPs {p['traced_matmul_flops']:.4g}" for p in result["compiled_points"]]
    timing = result.get("step_time", {}).get("timing_compile_seconds", 0.0)
    lines += ["", f"Compile time here: {result['compile_seconds'] + timing:.0f} s"]
    lines += [f"WARNING: {warning}" for warning in result["warnings"]]
    lines += ["Notes:"]
    lines += [f"  - {note}" for note in result["notes"]]
    return "\n".join(lines)


def _header_lines(result: dict[str, Any]) -> list[str]:
    """The gin files, devices and mesh, model and batch lines that open the text report."""
    model, batch = result["model"], result["batch"]
    lengths = batch["sequence_length"]
    mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
    if "target" in result:
        target = result["target"]
        devices = (f"{result['devices']} x {result['device_kind']} ({target['topology']} = "
                   f"{target['cloud_type']}, compile-only devices)")
    else:
        devices = f"{result['devices']} (emulated {result['device_kind']})"
    return [
        f"alexatm-plan: {' + '.join(result['gin_files'])}",
        f"  devices    {devices}, mesh {mesh}, rules '{result['rules']}'",
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
    ]


def _memory_lines(mem: dict[str, Any]) -> list[str]:
    """The per-device memory table, with the fit verdict when a device size was given."""
    lines = [
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
    return lines


def _flops_lines(result: dict[str, Any]) -> list[str]:
    """The FLOPs-per-step table: analytic, traced and XLA's cost analysis."""
    flops = result["flops"]
    return [
        "FLOPs per step",
        f"  model FLOPs (analytic)          {flops['model_flops_per_step']:10.4g}   "
        f"{flops['model_flops_source']}",
        f"  traced matmul FLOPs             {flops['traced_matmul_flops_per_step']:10.4g}   "
        f"incl. remat recomputation; {flops['traced_source']}",
        f"  XLA cost analysis, per device   {flops['xla_flops_per_device']:10.4g}   "
        f"x {result['devices']} devices = {flops['xla_flops_all_devices']:.4g}; "
        f"{flops['xla_source']}",
    ]


def _step_time_lines(result: dict[str, Any]) -> list[str]:
    """The step-time section: the cost model's, the assumed-MFU one, or why there is none."""
    if "step_time" in result and "implied_mfu" in result["step_time"]:
        step = result["step_time"]
        return [
            f"Step time, estimated by {step['source']}",
            f"  {step['seconds_per_step']:.4g} s/step, implied MFU "
            f"{100 * step['implied_mfu']:.1f}% of {step['peak_tflops_per_device']:g} TFLOP/s "
            f"per device, {step['positions_per_second']:,.0f} positions/s, "
            f"{_duration(step['days_for_train_steps'])} for {result['train_steps']:,} steps",
            f"  from {step['method']}: "
            + ", ".join(f"{p['encoder_layers']}+{p['decoder_layers']} layers "
                        f"{p['optimal_seconds']:.4g} s" for p in step["timing_points"]),
        ]
    if "step_time" in result:
        step = result["step_time"]
        return [
            f"Step time at {step['peak_tflops_per_device']:g} TFLOP/s per device and MFU "
            f"{step['mfu']:g} ({step['formula']})",
            f"  {step['seconds_per_step']:.3f} s/step, {step['positions_per_second']:,.0f} "
            f"positions/s, {_duration(step['days_for_train_steps'])} for "
            f"{result['train_steps']:,} steps",
        ]
    if "target" in result:
        why = ("--no_step_time" if result["target"]["cost_model"]
               else "the GPU compiler has no cost model; give --devices N --peak_tflops for an "
                    "assumed-MFU figure")
        return [f"Step time: not estimated ({why})"]
    return ["Step time: give --peak_tflops (and --mfu) to predict it"]


def target_devices(args: argparse.Namespace) -> list[Any] | None:
    """Start JAX for the plan's target and return its devices (None: the emulated CPU devices).
    Raises RuntimeError naming the problem."""
    if args.target is None:
        emulate_cpu_devices(args.devices)
        return None
    os.environ["JAX_PLATFORMS"] = "cpu"  # the target compiler is used through its topology only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from alexatm_jax.gpu_topology import GpuTarget, gpu_devices

    if isinstance(args.target, GpuTarget):
        return gpu_devices(args.target)
    from alexatm_jax.tpu_topology import (libtpu_problem, prepare_compile_only_environment,
                                          topology_devices)

    problem = libtpu_problem()
    if problem:
        raise RuntimeError(f"--topology needs the TPU compiler: {problem}")
    prepare_compile_only_environment(args.target)
    return topology_devices(args.target)


def adapt_job_to_target(job: "TrainConfig", args: argparse.Namespace) -> "TrainConfig":
    """cuDNN attention needs the cuDNN library to compile; without it a GPU plan uses XLA's
    attention, and the report says so."""
    from alexatm_jax.gpu_topology import GpuTarget, cudnn_problem

    args.target_notes = []
    problem = cudnn_problem()
    if (isinstance(args.target, GpuTarget) and job.model_config.attention_impl == "cudnn"
            and problem):
        args.target_notes.append(f"attention_impl 'cudnn' could not be compiled here "
                                 f"({problem}): planned as 'dot_product'")
        config = job.model_config.replace(attention_impl="dot_product")
        return dataclasses.replace(job, model_config=config)
    return job


def run_plan(job: "TrainConfig", devices: list[Any] | None, args: argparse.Namespace
             ) -> tuple["Plan", "StepTimeEstimate | None"]:
    """The plan and, for a TPU target, the cost model's step time, with a progress bar."""
    from tqdm import tqdm

    from alexatm_jax.planning import estimate_step_time, make_plan, timing_depths

    timed = args.target is not None and args.target.has_cost_model and not args.no_step_time
    timing_compiles = len(timing_depths(job, args.timing_layers)) if timed else 0
    stages = 3 * ((1 if args.extrapolate_from_layers is None else 3) + timing_compiles)
    with tqdm(total=stages, desc="plan", unit="stage", file=sys.stderr) as bar:
        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)
        plan = make_plan(job, devices=devices, extrapolate_from_layers=args.extrapolate_from_layers,
                         progress=progress)
        estimate = (estimate_step_time(job, devices, layers=args.timing_layers,
                                       peak_flops_per_device=args.peak_tflops * 1e12,
                                       progress=progress) if timed else None)
    return plan, estimate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-plan`; returns the exit status."""
    args, bindings = parse_args(argv)
    try:
        devices = target_devices(args)
    except RuntimeError as error:
        print(f"alexatm-plan: error: {error}", file=sys.stderr)
        return 2
    try:
        parse_gin_config(args.gin_file, bindings, args.gin_search_path)
        job = train_config_from_gin()
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"alexatm-plan: error: gin configuration: {error}", file=sys.stderr)
        return 2
    job = adapt_job_to_target(job, args)
    from alexatm_jax.planning import DoesNotFit

    try:
        plan, estimate = run_plan(job, devices, args)
    except ValueError as error:
        print(f"alexatm-plan: error: {error}", file=sys.stderr)
        return 2
    except DoesNotFit as error:
        print(f"alexatm-plan: {' + '.join(args.gin_file)} on {args.topology}: DOES NOT FIT: "
              f"{error}")
        return 0
    result = report(plan, args, estimate)
    print(json.dumps(result, indent=2) if args.format == "json" else format_text(result))
    if args.json_out:
        path = pathlib.Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"alexatm-plan: JSON report written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
