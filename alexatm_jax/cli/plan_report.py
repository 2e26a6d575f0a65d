"""What `alexatm-plan` prints: the plan as a JSON-ready report and as text (bytes per device,
FLOPs, the cost model's step time, and where each figure comes from)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alexatm_jax.dcn import DcnTraffic
    from alexatm_jax.eval_planning.training_eval_cost import HookCost
    from alexatm_jax.planning import Plan, StepTimeEstimate

GIB = 2**30
TPU_BACKEND_NOTE = (
    "Compiled buffer sizes are the TPU compiler's (libtpu) buffer assignment of the partitioned "
    "step for these chips. The step time is its cost model (cost_analysis()['optimal_seconds']), "
    "not a measurement: it models compute and memory traffic, and may not see every "
    "interconnect stall or host delay."
)
GPU_BACKEND_NOTE = (
    "Compiled buffer sizes are XLA:GPU's buffer assignment of the partitioned step for these "
    "GPUs (compiled on this CPU, with no GPU to autotune on). NCCL buffers and cuBLAS/cuDNN workspaces "
    "are allocated at run time and are not in it: keep headroom."
)
CPU_BACKEND_NOTE = (
    "Compiled buffer sizes come from XLA:CPU's buffer assignment of the partitioned step, not "
    "from the TPU/GPU compiler: fusion, layouts, scheduling and rematerialisation differ there, "
    "so real temporaries can be smaller or larger. Parameter, optimizer-state and batch bytes "
    "are exact."
)
SCAN_FLOPS_NOTE = (
    "XLA's cost analysis visits each while-loop body once: with scan_layers every layer stack "
    "counts as one layer, so the XLA figure is not a step total. The traced matmul FLOPs "
    "multiply scan bodies by their length and include remat recomputation."
)


DCN_NOTE = (
    "DCN term: the gradient all-reduce between slices, which the TPU cost model does not price. "
    "Float32 gradients are first reduce-scattered over ICI, so each host of a data-parallel "
    "group holds 1/hosts_per_group of them; a ring all-reduce over the D groups (slices along "
    "replica x data) then sends 2 (D - 1) / D of that shard from every host, once per step, "
    "at the per-host DCN bandwidth. It can overlap only the last microbatch's backward pass "
    "(2/3 of its time), and only the stated fraction of it; the rest adds to the step."
)


def report(
    plan: Plan,
    args: argparse.Namespace,
    estimate: StepTimeEstimate | None = None,
    dcn: DcnTraffic | None = None,
    few_shot: Sequence[HookCost] = (),
) -> dict[str, Any]:
    """The plan as a JSON-ready dict: bytes per device, FLOPs, step time, the DCN term of a TPU
    target, the FewShotEval hooks' cost (`few_shot_eval`, when priced), provenance notes."""
    job, cfg = plan.config, plan.config.model_config
    compiled_source, traced_source = _compile_sources(plan)
    result = {
        "gin_files": list(args.gin_file),
        "devices": plan.num_devices,
        "device_kind": plan.device_kind,
        "platform": plan.platform,
        "mesh": plan.mesh_shape,
        "rules": plan.rules_name,
        "model": _model_report(plan),
        "batch": _batch_report(plan),
        "train_steps": job.train_steps,
        "memory_per_device": _memory_report(plan, args, compiled_source),
        "flops": _flops_report(plan, compiled_source, traced_source),
        "compiled_points": [
            {
                "encoder_layers": depth[0],
                "decoder_layers": depth[1],
                "argument_bytes": step.argument_bytes,
                "temp_bytes": step.temp_bytes,
                "total_bytes": step.total_bytes,
                "xla_flops_per_device": step.xla_flops_per_device,
                "traced_matmul_flops": step.matmul_flops,
            }
            for depth, step in plan.compiled_points
        ],
        "compile_seconds": plan.compile_seconds,
        "warnings": list(plan.warnings),
        "notes": [
            {"tpu": TPU_BACKEND_NOTE, "gpu": GPU_BACKEND_NOTE}.get(plan.platform, CPU_BACKEND_NOTE)
        ]
        + list(getattr(args, "target_notes", []))
        + ([SCAN_FLOPS_NOTE] if cfg.scan_layers else [])
        + _attention_notes(plan),
    }
    if args.target is not None:
        result["target"] = args.target.describe()
        if estimate is not None:
            result["step_time"] = cost_model_step_time(plan, estimate, args.peak_tflops)
    if dcn is not None:
        _add_dcn(result, dcn, estimate, args.dcn_overlap)
    if args.target is None and args.peak_tflops:
        result["step_time"] = _assumed_mfu_step_time(plan, args.peak_tflops, args.mfu)
    if few_shot:
        from alexatm_jax.eval_planning.training_eval_cost import NOTE

        result["few_shot_eval"] = [cost.to_json() for cost in few_shot]
        result["notes"].append(NOTE)
    return result


def _add_dcn(
    result: dict[str, Any], dcn: DcnTraffic, estimate: StepTimeEstimate | None, overlap: float
) -> None:
    """The DCN term in `result`, with its note and a warning for axes it does not price."""
    result["dcn"] = dcn_report(dcn, estimate, overlap)
    if dcn.num_slices > 1:
        result["notes"].append(DCN_NOTE)
    if dcn.unpriced_axes:
        result["warnings"].append(
            f"mesh axes {list(dcn.unpriced_axes)} span slices: their weight gathers and "
            "gradient reduce-scatters cross DCN in every layer, which the DCN term does not "
            "price (it covers the replica/data gradient all-reduce only)"
        )


def dcn_report(
    dcn: DcnTraffic, estimate: StepTimeEstimate | None, overlap: float
) -> dict[str, Any]:
    """The DCN term: slices per mesh axis, bytes each host sends per step, their seconds, and
    the cost model's step time without and with them (seconds)."""
    result: dict[str, Any] = {
        "num_slices": dcn.num_slices,
        "hosts": dcn.num_hosts,
        "slices_per_axis": dict(dcn.slices_per_axis),
        "data_parallel_groups": dcn.data_parallel_groups,
        "bytes_sent_per_host_per_step": dcn.bytes_sent_per_host,
        "gbps_per_host": dcn.gbps_per_host,
        "seconds_per_step": dcn.seconds,
        "overlap_of_last_backward": overlap,
        "unpriced_axes": list(dcn.unpriced_axes),
    }
    if estimate is not None:
        exposed = dcn.exposed_seconds(estimate.seconds, estimate.microbatches, overlap)
        result["exposed_seconds_per_step"] = exposed
        result["step_seconds_without_dcn"] = estimate.seconds
        result["step_seconds_with_dcn"] = estimate.seconds + exposed
    return result


def _compile_sources(plan: Plan) -> tuple[str, str]:
    """Where the compiled and the traced figures come from: (compiled source, traced source)."""
    depths = [list(d) for d in plan.compiled_depths]
    source = (
        f"extrapolated from compiles at (encoder, decoder) layers {depths}"
        if plan.extrapolated
        else f"measured: compiled at {depths[0]} layers"
    )
    traced_source = (
        f"extrapolated from traces at {depths}"
        if plan.extrapolated
        else f"traced at {depths[0]} layers"
    )
    return source, traced_source


def _model_report(plan: Plan) -> dict[str, Any]:
    """The model's size, depth and compute settings."""
    cfg = plan.config.model_config
    return {
        "num_params": plan.num_params,
        "encoder_layers": cfg.num_encoder_layers,
        "decoder_layers": cfg.num_decoder_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "dtype": cfg.dtype,
        "param_dtype": "float32",
        "scan_layers": cfg.scan_layers,
        "remat_policy": cfg.remat_policy,
        "attention_impl": cfg.attention_impl,
    }


def _batch_report(plan: Plan) -> dict[str, Any]:
    """The global batch: sequences, lengths, positions and target tokens per step."""
    job = plan.config
    return {
        "global_sequences": job.batch_size,
        "sequence_length": dict(job.sequence_length),
        "sequences_per_batch_shard": job.batch_size // plan.batch_shards,
        "grad_accum_steps": job.grad_accum_steps,
        "positions_per_step": plan.positions_per_step,
        "target_tokens_per_step": job.batch_size * job.sequence_length["targets"],
    }


def _memory_report(plan: Plan, args: argparse.Namespace, source: str) -> dict[str, Any]:
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
        memory["fits"] = (
            None if plan.warnings else compiled.total_bytes <= args.device_memory_gib * GIB
        )
    return memory


def _flops_report(plan: Plan, source: str, traced_source: str) -> dict[str, Any]:
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


def _assumed_mfu_step_time(plan: Plan, peak_tflops: float, mfu: float) -> dict[str, Any]:
    """Step time in seconds from the model FLOPs at `peak_tflops` per device and an assumed MFU."""
    seconds = plan.step_time_s(peak_tflops * 1e12, mfu)
    return {
        "peak_tflops_per_device": peak_tflops,
        "mfu": mfu,
        "seconds_per_step": seconds,
        "positions_per_second": plan.positions_per_step / seconds,
        "days_for_train_steps": seconds * plan.config.train_steps / 86400,
        "formula": "model_flops_per_step / (devices * peak_tflops * 1e12 * mfu)",
    }


def _attention_notes(plan: Plan) -> list[str]:
    from alexatm_jax.planning import planned_model_config

    impl = plan.config.model_config.attention_impl
    planned = planned_model_config(plan.config.model_config, plan.platform).attention_impl
    if planned == impl == "splash":
        return [
            "the splash kernels' q.k and p.v products run inside Pallas calls: the traced "
            "matmul FLOPs leave them out (the model FLOPs and the cost model count them)"
        ]
    if planned == impl:
        return []
    return [
        f"attention_impl '{impl}' does not exist on {plan.platform}: planned as '{planned}', "
        "which materialises the attention scores (an upper bound on memory)"
    ]


def cost_model_step_time(
    plan: Plan, estimate: StepTimeEstimate, peak_tflops: float
) -> dict[str, Any]:
    """The TPU cost model's step time, the MFU it implies and how it was derived."""
    job = plan.config
    seconds = estimate.seconds
    depths = [list(depth) for depth, _ in estimate.points]
    slices = estimate.slices
    how = (
        (
            f"one of the {slices} slices, timed with its share of the batch (the cost "
            "model gives cross-slice collectives no time; the DCN term adds them): "
            if slices > 1
            else ""
        )
        + f"optimal_seconds of one microbatch "
        f"({job.batch_size // slices // estimate.microbatches} "
        f"sequences), layers unscanned, compiled at (encoder, decoder) layers {depths}"
        + (f", extrapolated linearly to {list(job.depths)}" if estimate.extrapolated else "")
        + (f", x {estimate.microbatches} microbatches" if estimate.microbatches > 1 else "")
        + (
            f"; + {estimate.uncosted_kernel_seconds:.3f} s for the splash kernels' matmuls at "
            "peak FLOP/s, which the cost model does not cost (a lower bound on their time)"
            if estimate.uncosted_kernel_seconds
            else ""
        )
    )
    return {
        "source": "the TPU compiler's cost model (cost_analysis()['optimal_seconds']), "
        "not a measurement",
        "method": how,
        "seconds_per_step": seconds,
        "peak_tflops_per_device": peak_tflops,
        "implied_mfu": estimate.mfu(
            plan.model_flops_per_step, plan.num_devices, peak_tflops * 1e12
        ),
        "positions_per_second": plan.positions_per_step / seconds,
        "days_for_train_steps": seconds * job.train_steps / 86400,
        "timing_points": [
            {"encoder_layers": d[0], "decoder_layers": d[1], "optimal_seconds": t}
            for d, t in estimate.points
        ],
        "timing_compile_seconds": estimate.compile_seconds,
        "uncosted_kernel_seconds": estimate.uncosted_kernel_seconds,
        "kernel_efficiency_sensitivity": kernel_efficiency_sensitivity(plan, estimate, peak_tflops),
    }


KERNEL_EFFICIENCIES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def kernel_efficiency_sensitivity(
    plan: Plan, estimate: StepTimeEstimate, peak_tflops: float
) -> list[dict[str, float]]:
    """Step time and MFU if the splash kernels' matmuls ran at each of KERNEL_EFFICIENCIES of
    peak FLOP/s instead of at peak ([] without uncosted kernels). The cost model prices the
    rest of the step; the kernels' time is the term it does not see."""
    kernel = estimate.uncosted_kernel_seconds
    if not kernel:
        return []
    rows = []
    for efficiency in KERNEL_EFFICIENCIES:
        seconds = estimate.seconds - kernel + kernel / efficiency
        mfu = plan.model_flops_per_step / (plan.num_devices * peak_tflops * 1e12 * seconds)
        rows.append({"kernel_efficiency": efficiency, "seconds_per_step": seconds, "mfu": mfu})
    return rows


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
    lines = (
        _header_lines(result)
        + [""]
        + _memory_lines(result["memory_per_device"])
        + [""]
        + _flops_lines(result)
        + [""]
        + _step_time_lines(result)
        + _dcn_lines(result)
        + _few_shot_lines(result)
    )
    if len(result["compiled_points"]) > 1:
        lines += ["", "Compiled points (per device)"]
        lines += [
            f"  {p['encoder_layers']:3d} + {p['decoder_layers']:<3d} layers: temporaries "
            f"{_size(p['temp_bytes'])}, total {_size(p['total_bytes'])}, traced matmul "
            f"FLOPs {p['traced_matmul_flops']:.4g}"
            for p in result["compiled_points"]
        ]
    timing = result.get("step_time", {}).get("timing_compile_seconds", 0.0)
    timing += sum(entry["compile_seconds"] for entry in result.get("few_shot_eval", []))
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
        devices = (
            f"{result['devices']} x {result['device_kind']} ({target['topology']} = "
            f"{target['cloud_type']}, compile-only devices)"
        )
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
        f"grad_accum_steps {batch['grad_accum_steps']} "
        f"({batch['sequences_per_batch_shard'] // batch['grad_accum_steps']} per microbatch)",
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
        verdict = {
            True: f"fits ({share} of the device)",
            False: f"DOES NOT FIT ({share} of the device)",
            None: "unknown: see the warning below",
        }[mem["fits"]]
        lines.append(
            f"  device memory                   {_size(mem['device_memory_bytes'])}   {verdict}"
        )
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


def _dcn_lines(result: dict[str, Any]) -> list[str]:
    """The DCN section of a TPU plan: bytes each host sends between slices and their time."""
    if "dcn" not in result:
        return []
    dcn = result["dcn"]
    if dcn["num_slices"] == 1:
        return ["", "Traffic between slices (DCN): none, one slice"]
    spans = " ".join(f"{axis}={n}" for axis, n in dcn["slices_per_axis"].items() if n > 1)
    lines = [
        "",
        f"Traffic between slices (DCN): {dcn['num_slices']} slices, {dcn['hosts']} hosts, "
        f"slices along {spans}",
        f"  gradient all-reduce {_size(dcn['bytes_sent_per_host_per_step']).strip()} sent per "
        f"host per step, at {dcn['gbps_per_host']:g} Gbit/s per host: "
        f"{dcn['seconds_per_step']:.4g} s",
    ]
    if "step_seconds_with_dcn" in dcn:
        lines.append(
            f"  step time {dcn['step_seconds_without_dcn']:.4g} s without DCN, "
            f"{dcn['step_seconds_with_dcn']:.4g} s with it ({dcn['exposed_seconds_per_step']:.4g} "
            f"s exposed; up to {dcn['overlap_of_last_backward']:g} of the last microbatch's "
            "backward pass overlaps it)"
        )
    return lines


def _few_shot_lines(result: dict[str, Any]) -> list[str]:
    """The FewShotEval hooks' cost on the training mesh ([] when not priced)."""
    if "few_shot_eval" not in result:
        return []
    from alexatm_jax.eval_planning.training_eval_cost import text_lines

    return text_lines(result["few_shot_eval"])


def _sensitivity_lines(rows: list[dict[str, float]]) -> list[str]:
    """How the step time and MFU move with the splash kernels' efficiency."""
    if not rows:
        return []
    return [
        "  if the splash kernels' matmuls ran at a share of peak FLOP/s (the estimate assumes "
        "100%): "
        + ", ".join(
            f"{100 * r['kernel_efficiency']:.0f}% -> {r['seconds_per_step']:.4g} s, "
            f"MFU {100 * r['mfu']:.1f}%"
            for r in rows
        )
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
            + ", ".join(
                f"{p['encoder_layers']}+{p['decoder_layers']} layers {p['optimal_seconds']:.4g} s"
                for p in step["timing_points"]
            ),
        ] + _sensitivity_lines(step.get("kernel_efficiency_sensitivity", []))
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
        why = (
            "--no_step_time"
            if result["target"]["cost_model"]
            else "the GPU compiler has no cost model; give --devices N --peak_tflops for an "
            "assumed-MFU figure"
        )
        return [f"Step time: not estimated ({why})"]
    return ["Step time: give --peak_tflops (and --mfu) to predict it"]
