"""One layout's evaluation plan: every program at every length bucket compiled by the TPU
compiler, its cost-model seconds and per-chip memory at the model's depth, and the roofline.

Time: the cost model visits a loop body once, so the programs are compiled with their layers
unrolled (scan_layers off) at (k, k), (2k, k) and (k, 2k) encoder/decoder layers and the
cost model's `optimal_seconds` is extended linearly to the model's depth
(`planning.extrapolate_linearly`); a decoder step runs no encoder and is compiled at (k, k) and
(k, 2k) only. A model no deeper than 2k layers is compiled whole.

Memory (`MEMORY_EXTRAPOLATED`, the default): the same compiles' per-chip memory, the
parameters taken out of each and the rest (activations, cache, temporaries, padding) extended
linearly in depth; the parameters one chip holds at the model's depth are exact (shard shapes)
and added back. That is the memory of the unrolled program at the model's depth, the program
of a checkpoint `alexatm-convert` wrote without --scan_layers: for a d_model 1024, 8+8-layer
model on v5p-8 (fsdp=4) it matched the full-depth unrolled compile to 0.01% for prefill and
scoring. `MEMORY_FULL_DEPTH`: one more compile per bucket, at the model's depth with the
config's own scan_layers, whose memory is reported as it is (scanned, that model's prefill and
scoring needed 13% and 17% less, its decoder step 7% more).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from alexatm_jax.eval_planning.compiled_programs import (
    compile_program,
    decoder_step_param_bytes_per_chip,
    layout_partitioner,
    params_bytes_per_chip,
)
from alexatm_jax.eval_planning.programs import DECODE_STEP, Layout, PlannedPrograms, ProgramShape
from alexatm_jax.eval_planning.roofline import Roofline
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.planning import (
    CompiledStep,
    Depths,
    DoesNotFit,
    extrapolate_linearly,
    extrapolation_depths,
    planned_model_config,
)
from alexatm_jax.tpu_topology import TpuTarget

MEMORY_EXTRAPOLATED = "extrapolated"
MEMORY_FULL_DEPTH = "full_depth"
GIB = 2.0**30
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """One program at one bucket on one layout.

    compiled: the compiler's figures at the model's depth (extrapolated unless compiled whole),
    None when the compiler ran out of memory (`does_not_fit` says how). memory: the per-chip
    figures the memory verdict uses (module doc). points: (depth, optimal_seconds) compiled.
    """

    shape: ProgramShape
    compiled: CompiledStep | None
    memory: CompiledStep | None
    points: tuple[tuple[Depths, float], ...]
    extrapolated: bool
    roofline_seconds: float
    does_not_fit: str | None = None

    @property
    def timed(self) -> bool:
        """Whether the cost model priced every compiled depth (it returns non-positive
        optimal_seconds where it cannot price some collectives, e.g. on v4 meshes)."""
        return bool(self.points) and all(seconds > 0 for _, seconds in self.points)

    @property
    def seconds(self) -> float:
        """The cost model's seconds for one call on the slice (NaN when not `timed`)."""
        return self.compiled.optimal_seconds if self.compiled and self.timed else float("nan")


@dataclasses.dataclass(frozen=True)
class LayoutPlan:
    """Every bucket of one layout, or why it was not compiled (`skipped`)."""

    layout: Layout
    params_bytes_per_chip: int
    hbm_bytes: float
    buckets: tuple[BucketPlan, ...] = ()
    programs: PlannedPrograms | None = None
    roofline: Roofline | None = None
    skipped: str | None = None

    @property
    def timed(self) -> bool:
        """Compiled, and the cost model priced every bucket (`BucketPlan.timed`)."""
        return self.skipped is None and bool(self.buckets) and all(b.timed for b in self.buckets)

    @property
    def fits(self) -> bool:
        """Compiled, and every bucket's memory fits one chip's HBM."""
        return (
            self.skipped is None
            and bool(self.buckets)
            and all(
                b.memory is not None and b.memory.total_bytes <= self.hbm_bytes
                for b in self.buckets
            )
        )


def program_depths(program: str, depths: Depths, layers: int) -> tuple[Depths, ...]:
    """The (encoder, decoder) depths a program is compiled at to time it (module doc)."""
    if min(depths) < 2 * layers:
        return (depths,)
    base, deeper_encoder, deeper_decoder = extrapolation_depths(layers)
    if program == DECODE_STEP:
        return (base, deeper_decoder)
    return (base, deeper_encoder, deeper_decoder)


def compiles_per_bucket(program: str, config: ModelConfig, layers: int, memory: str) -> int:
    """How many compiles `plan_layout` makes for one bucket of `program`."""
    depths = (config.num_encoder_layers, config.num_decoder_layers)
    return len(program_depths(program, depths, layers)) + (memory == MEMORY_FULL_DEPTH)


def plan_layout(
    config: ModelConfig,
    layout: Layout,
    devices: Sequence[Any],
    target: TpuTarget,
    shapes: Sequence[ProgramShape],
    *,
    layers: int = 2,
    memory: str = MEMORY_EXTRAPOLATED,
    progress: Progress = lambda stage: None,
) -> LayoutPlan:
    """Compile every shape of `shapes` for `layout` on `devices` of `target` (module doc).

    A layout whose parameters alone exceed a chip's HBM is skipped without compiling; a bucket
    the compiler cannot fit is reported in its BucketPlan."""
    config = planned_model_config(config, "tpu")
    partitioner = layout_partitioner(layout, list(devices))
    hbm_bytes = target.hbm_gib * GIB
    param_bytes = params_bytes_per_chip(config, partitioner)
    if param_bytes > hbm_bytes:
        return LayoutPlan(
            layout,
            param_bytes,
            hbm_bytes,
            skipped=f"its parameters take {param_bytes / GIB:.2f} GiB per chip, more than the "
            f"{target.hbm_gib:g} GiB of HBM",
        )
    roofline = layout_roofline(config, layout, partitioner, target)
    named = lambda stage: progress(f"{layout.name} {stage}")
    buckets = tuple(
        plan_bucket(config, partitioner, shape, roofline, layers, memory, named) for shape in shapes
    )
    priced = [(b.shape, b.seconds) for b in buckets if b.compiled is not None and b.timed]
    programs = PlannedPrograms(layout, shapes[0].batch, priced, roofline) if priced else None
    return LayoutPlan(layout, param_bytes, hbm_bytes, buckets, programs, roofline)


def layout_roofline(
    config: ModelConfig, layout: Layout, partitioner: Any, target: TpuTarget
) -> Roofline:
    """The layout's Roofline on `target`'s chips."""
    head_shards = layout.tensor if config.num_decoder_heads % layout.tensor == 0 else 1
    return Roofline(
        config=config,
        chips=layout.chips,
        peak_flops_per_chip=target.peak_bf16_tflops * 1e12,
        hbm_bytes_per_s=target.chip.hbm_gbytes_per_s * 1e9,
        decoder_param_bytes_per_chip=decoder_step_param_bytes_per_chip(config, partitioner),
        kv_shards=layout.batch_shards * head_shards,
    )


def plan_bucket(
    config: ModelConfig,
    partitioner: Any,
    shape: ProgramShape,
    roofline: Roofline,
    layers: int,
    memory: str,
    progress: Progress,
) -> BucketPlan:
    """One bucket's timing compiles (and full-depth memory compile), extended to the model's
    depth; a bucket the compiler cannot fit comes back with `does_not_fit` set."""
    depths = (config.num_encoder_layers, config.num_decoder_layers)
    label = f"{shape.program} {shape.input_len}"
    measured: dict[Depths, CompiledStep] = {}
    try:
        for depth in program_depths(shape.program, depths, layers):
            at_depth = config.replace(
                num_encoder_layers=depth[0], num_decoder_layers=depth[1], scan_layers=False
            )
            measured[depth] = compile_program(shape, at_depth, partitioner)
            progress(f"{label} {depth[0]}+{depth[1]} layers")
    except DoesNotFit as error:
        return BucketPlan(shape, None, None, (), False, roofline.seconds(shape), str(error))
    extrapolated = depths not in measured
    compiled = extrapolate_linearly(measured, layers, depths) if extrapolated else measured[depths]
    points = tuple((depth, step.optimal_seconds) for depth, step in measured.items())
    plan = BucketPlan(shape, compiled, compiled, points, extrapolated, roofline.seconds(shape))
    if memory == MEMORY_FULL_DEPTH:
        try:
            full = compile_program(shape, config, partitioner)
        except DoesNotFit as error:
            return dataclasses.replace(plan, memory=None, does_not_fit=str(error))
        progress(f"{label} full depth")
        return dataclasses.replace(plan, memory=full)
    if extrapolated:
        return dataclasses.replace(
            plan, memory=extrapolated_memory(measured, layers, config, partitioner)
        )
    return plan


def extrapolated_memory(
    measured: dict[Depths, CompiledStep], layers: int, config: ModelConfig, partitioner: Any
) -> CompiledStep:
    """The compiled steps extended to the model's depth with the parameters exact: each
    point's argument bytes less the parameters it held, extended linearly, plus the parameters
    one chip holds at the model's depth."""

    def params_at(depth: Depths) -> int:
        at_depth = config.replace(num_encoder_layers=depth[0], num_decoder_layers=depth[1])
        return params_bytes_per_chip(at_depth, partitioner)

    without_params = {
        depth: dataclasses.replace(step, argument_bytes=step.argument_bytes - params_at(depth))
        for depth, step in measured.items()
    }
    depths = (config.num_encoder_layers, config.num_decoder_layers)
    rest = extrapolate_linearly(without_params, layers, depths)
    return dataclasses.replace(rest, argument_bytes=rest.argument_bytes + params_at(depths))
