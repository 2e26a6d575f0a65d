"""What `alexatm-plan --eval` prints: per layout, program and length bucket, the per chip
memory, the TPU cost model's seconds, the roofline and their ratio, as JSON-ready data and as
text tables."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alexatm_jax.eval_planning.layout_plan import BucketPlan, LayoutPlan
    from alexatm_jax.eval_planning.programs import Layout
    from alexatm_jax.eval_planning.roofline import Roofline
    from alexatm_jax.model.config import ModelConfig

GIB = 2.0**30
TIME_NOTE = (
    "Seconds are the TPU cost model's (cost_analysis()['optimal_seconds']) for one call on the "
    "slice, not a measurement. It visits a loop body once, so the layers are compiled "
    "unrolled, at {depths} encoder+decoder layers; * marks seconds extended linearly from "
    "those depths to the model's."
)
MEMORY_NOTES = {
    "extrapolated": "Memory per chip: the timing compiles' buffer assignment, extended "
    "linearly in depth, with the parameters exact (shard shapes at the model's depth).",
    "full_depth": "Memory per chip: the TPU compiler's buffer assignment of each program "
    "compiled at the model's depth (scan_layers as configured).",
}
ROOFLINE_NOTE = (
    "Roofline: prefill and scoring at the slice's peak FLOP/s (model FLOPs: 2 per multiply-add "
    "of the parameter matmuls, plus attention); a decoder step at the HBM bandwidth of one "
    "chip (the decoder-step parameters it holds and its share of the KV cache). ratio = cost "
    "model / roofline."
)
SPLASH_NOTE = (
    "attention_impl 'splash': the cost model gives its Pallas kernels no time, so prefill and "
    "scoring seconds leave out the encoder's and decoder's attention."
)


def eval_report(
    args: argparse.Namespace,
    config: ModelConfig,
    batch: int,
    plans: list[LayoutPlan],
    notes: list[str],
    gin_layout: Layout | None,
) -> dict[str, Any]:
    """The eval plan as a JSON-ready dict."""
    from alexatm_jax.model.params import count_params, param_shapes

    depths = sorted({depth for plan in plans for b in plan.buckets for depth, _ in b.points})
    all_notes = [
        TIME_NOTE.format(depths=", ".join(f"{e}+{d}" for e, d in depths) or "-"),
        MEMORY_NOTES[args.eval_memory],
        ROOFLINE_NOTE,
        *([SPLASH_NOTE] if config.attention_impl == "splash" else []),
        *notes,
    ]
    return {
        "mode": "eval",
        "gin_files": list(args.gin_file),
        "tasks": list(args.eval_tasks),
        "target": {**args.target.describe(), "hbm_gbytes_per_s": args.target.chip.hbm_gbytes_per_s},
        "model": {
            "num_params": count_params(param_shapes(config)),
            "param_dtype": config.param_dtype,
            "dtype": config.dtype,
            "depths": [config.num_encoder_layers, config.num_decoder_layers],
        },
        "batch_size": batch,
        "max_new_tokens": args.eval_max_new_tokens,
        "timing_layers": args.timing_layers,
        "memory_method": args.eval_memory,
        "layouts": [layout_report(plan, gin_layout) for plan in plans],
        "notes": all_notes,
    }


def layout_report(plan: LayoutPlan, gin_layout: Layout | None) -> dict[str, Any]:
    """One layout's entry: its mesh, its parameters per chip and every bucket."""
    layout = plan.layout
    return {
        "layout": layout.name,
        "data": layout.data,
        "fsdp": layout.fsdp,
        "tensor": layout.tensor,
        "rules": layout.rules,
        "gin": layout == gin_layout,
        "alexatm_eval_flags": layout.eval_flags,
        "params_gib_per_chip": plan.params_bytes_per_chip / GIB,
        "fits": plan.fits,
        "skipped": plan.skipped,
        "programs": [bucket_report(b, plan.roofline, plan.hbm_bytes) for b in plan.buckets],
    }


def bucket_report(bucket: BucketPlan, roofline: Roofline, hbm_bytes: float) -> dict[str, Any]:
    """One bucket's entry: memory per chip, cost-model seconds, roofline and ratio."""
    from alexatm_jax.eval_planning.roofline import FLOPS, KINDS

    shape = bucket.shape
    kind = KINDS[shape.program]
    work = roofline.flops(shape) if kind == FLOPS else roofline.decode_bytes_per_chip(shape)
    return {
        "program": shape.program,
        "batch": shape.batch,
        "input_len": shape.input_len,
        "target_len": shape.target_len,
        "cache_len": shape.cache_len,
        "memory": memory_report(bucket, hbm_bytes),
        "does_not_fit": bucket.does_not_fit,
        "cost_model_seconds": bucket.seconds,
        "roofline_seconds": bucket.roofline_seconds,
        "roofline_kind": kind,
        "roofline_work": work,
        "roofline_work_unit": "model FLOPs" if kind == FLOPS else "HBM bytes per chip",
        "ratio": bucket.seconds / bucket.roofline_seconds,
        "extrapolated": bucket.extrapolated,
        "compiled_points": [
            {"depths": list(depth), "cost_model_seconds": seconds}
            for depth, seconds in bucket.points
        ],
    }


def memory_report(bucket: BucketPlan, hbm_bytes: float) -> dict[str, Any] | None:
    """Per chip GiB (arguments, outputs not aliased to donated arguments, temporaries, code,
    total), the share of the HBM and the verdict; None when the compiler found no fit."""
    step = bucket.memory
    if step is None:
        return None
    return {
        "arguments_gib": step.argument_bytes / GIB,
        "outputs_gib": (step.output_bytes - step.alias_bytes) / GIB,
        "temporaries_gib": step.temp_bytes / GIB,
        "code_gib": step.generated_code_bytes / GIB,
        "total_gib": step.total_bytes / GIB,
        "share_of_hbm": step.total_bytes / hbm_bytes,
        "fits": step.total_bytes <= hbm_bytes,
    }


def format_seconds(seconds: float) -> str:
    """'12.3 ms', '4.56 us', '1.23 s' (4 significant figures at most)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns" if seconds == seconds else "-"


def format_eval_text(result: dict[str, Any]) -> str:
    """The report as text: a header, one table per layout, the notes."""
    target, model = result["target"], result["model"]
    lines = [
        f"alexatm-plan --eval: {_count(len(result['tasks']), 'task')} on {target['cloud_type']} "
        f"({target['topology']}, {target['chips']} chips of {target['hbm_gib']:g} GiB HBM, "
        f"{target['hbm_gbytes_per_s']:g} GB/s, {target['peak_bf16_tflops']:g} TFLOP/s)",
        f"model: {_count(model['num_params'])} parameters in {model['param_dtype']}, "
        f"{model['depths'][0]}+{model['depths'][1]} layers; batch {result['batch_size']}, "
        f"{result['max_new_tokens']} new tokens",
    ]
    for entry in result["layouts"]:
        lines += ["", _layout_heading(entry)]
        if entry["skipped"]:
            lines.append(f"  not compiled: {entry['skipped']}")
            continue
        lines += _table(entry["programs"])
    lines += [""] + [f"* {note}" for note in result["notes"]]
    return "\n".join(lines)


def _count(number: int, noun: str = "") -> str:
    """'19.75B', '1.005M', '1 task', '8 tasks'."""
    if noun:
        return f"{number} {noun}{'' if number == 1 else 's'}"
    for suffix, scale in (("B", 1e9), ("M", 1e6)):
        if number >= scale:
            return f"{number / scale:.4g}{suffix}"
    return str(number)


def _layout_heading(entry: dict[str, Any]) -> str:
    verdict = "fits" if entry["fits"] else "DOES NOT FIT"
    gin = " (the gin's)" if entry["gin"] else ""
    return (
        f"layout {entry['layout']}{gin}, rules {entry['rules']} "
        f"[alexatm-eval {entry['alexatm_eval_flags']}]: parameters "
        f"{entry['params_gib_per_chip']:.2f} GiB per chip; {verdict}"
    )


def _table(buckets: list[dict[str, Any]]) -> list[str]:
    header = ("program", "input", "target", "cache", "GiB/chip", "HBM", "cost model", "roofline")
    rows = [header + ("kind", "ratio")]
    for b in buckets:
        memory = b["memory"]
        rows.append(
            (
                b["program"],
                str(b["input_len"]),
                str(b["target_len"] or "-"),
                str(b["cache_len"] or "-"),
                f"{memory['total_gib']:.2f}" if memory else "OOM",
                f"{memory['share_of_hbm']:.0%}" if memory else "-",
                format_seconds(b["cost_model_seconds"]) + ("*" if b["extrapolated"] else ""),
                format_seconds(b["roofline_seconds"]),
                b["roofline_kind"],
                f"{b['ratio']:.2f}" if b["ratio"] == b["ratio"] else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) + 2)]
    lines = ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    failures = [f"  {b['program']} {b['input_len']}: {b['does_not_fit']}" for b in buckets]
    return (
        lines
        + [line for line, b in zip(failures, buckets) if b["does_not_fit"]]
        + (
            ["  * extended to the model's depth from shallower compiles"]
            if any(b["extrapolated"] for b in buckets)
            else []
        )
    )
