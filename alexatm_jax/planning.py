"""Ahead-of-time planning of a training run: per-device memory, FLOPs and step time, allocating
nothing.

The train step of a run (its `TrainConfig`, as `train()` takes it) is traced, lowered and
compiled against abstract arrays (`jax.ShapeDtypeStruct`s carrying the run's shardings) on the
devices given: N emulated CPU devices (`alexatm-plan --devices N`), or the compile-only devices
of a TPU slice that libtpu describes (`alexatm-plan --topology v5p-256`, `tpu_topology.py`),
for which the TPU compiler itself compiles the step on this machine's CPU.
From the compiled program come per-device buffer sizes (`compiled.memory_analysis()`) and XLA's
FLOP count (`compiled.cost_analysis()`); from the traced program the matmul FLOPs of a whole
step; from the shapes and shardings the exact per-device bytes of parameters and optimizer state;
from `training/flops.py` the model FLOPs that MFU is defined against.

What the numbers are and are not:
* On CPU devices the buffer sizes are XLA:CPU's buffer assignment for the partitioned program.
  A TPU or GPU compiler fuses, lays out, schedules and rematerialises differently, so its
  temporaries can be smaller or larger; parameters, optimizer state and batch arguments are
  exact. On TPU devices they are the TPU compiler's own buffer assignment.
* The TPU compiler's cost analysis adds `optimal_seconds`, its cost model's estimate of the
  step's run time. It visits a while-loop body once too, so `estimate_step_time` compiles the
  layers unscanned at shallow depths, one microbatch at a time, and extrapolates
  (microbatches x the extrapolated microbatch step). It is a model, not a measurement.
* XLA's cost analysis visits a while-loop body once: with `scan_layers` each layer stack counts as
  one layer, so its FLOPs are then not a step total. The traced matmul count multiplies scan bodies
  by their length and includes remat recomputation (2·M·N·K per dot_general; everything that is
  not a matmul is left out, as in the analytic model FLOPs).
* Extrapolation (`extrapolate_from_layers=k`): the step is compiled with (k, k), (2k, k) and
  (k, 2k) encoder/decoder layers and every compiled quantity is extended linearly in the two
  depths to the configured depth. Parameters/optimizer bytes and model FLOPs are always computed
  for the configured depth.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from alexatm_jax.data.synthetic import SyntheticHostBatches
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import count_params, param_shapes
from alexatm_jax.model.splash import splash_kernel_flops
from alexatm_jax.partitioning import BATCH_MESH_AXES, Partitioner
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.flops import train_flops_per_step
from alexatm_jax.training.optimizer import make_optimizer
from alexatm_jax.training.state import (
    abstract_train_state,
    train_state_shardings,
    training_model_config,
)
from alexatm_jax.training.step import make_train_step

Depths = tuple[int, int]
ProgressCallback = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """Per-device buffer bytes of the compiled step, its XLA FLOPs per device and the traced
    matmul FLOPs of the whole step (all devices). Floats, because extrapolated values are."""

    argument_bytes: float
    output_bytes: float
    alias_bytes: float
    temp_bytes: float
    generated_code_bytes: float
    xla_flops_per_device: float
    matmul_flops: float
    optimal_seconds: float = float("nan")  # the TPU cost model's step time; nan elsewhere

    @property
    def total_bytes(self) -> float:
        """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything `alexatm-plan` reports about one run on one mesh (bytes are per device)."""

    config: TrainConfig
    num_devices: int
    device_kind: str
    mesh_shape: dict[str, int]
    rules_name: str
    num_params: int
    params_bytes: int
    optimizer_state_bytes: int
    batch_bytes: int
    compiled: CompiledStep
    compiled_points: tuple[tuple[Depths, CompiledStep], ...]
    extrapolated: bool
    warnings: tuple[str, ...]
    model_flops_per_step: float
    compile_seconds: float
    platform: str = "cpu"

    @property
    def compiled_depths(self) -> tuple[Depths, ...]:
        """The (encoder, decoder) depths that were actually compiled."""
        return tuple(depth for depth, _ in self.compiled_points)

    @property
    def batch_shards(self) -> int:
        """How many ways the global batch is split."""
        return math.prod(self.mesh_shape[axis] for axis in BATCH_MESH_AXES)

    @property
    def positions_per_step(self) -> int:
        """Input + target positions of one global batch (padding included)."""
        return self.config.positions_per_step

    def step_time_s(self, peak_flops_per_device: float, mfu: float) -> float:
        """Seconds per step if the devices run the model FLOPs at `mfu` of their peak FLOP/s."""
        if peak_flops_per_device <= 0 or not 0 < mfu <= 1:
            raise ValueError("peak_flops_per_device must be > 0 and mfu in (0, 1]")
        return self.model_flops_per_step / (self.num_devices * peak_flops_per_device * mfu)


def abstract_batch(
    config: TrainConfig, partitioner: Partitioner
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the trainer feeds (features of SeqIO's packed EncDec converter, as the
    synthetic source makes them), as batch-sharded ShapeDtypeStructs."""
    example = SyntheticHostBatches(
        vocab_size=config.model_config.vocab_size,
        sequence_length=dict(config.sequence_length),
        per_host_batch_size=1,
    ).next_batch()
    return {
        name: jax.ShapeDtypeStruct(
            (config.batch_size,) + row.shape[1:],
            row.dtype,
            sharding=partitioner.batch_sharding(row.ndim),
        )
        for name, row in example.items()
    }


def check_batch_layout(config: TrainConfig, partitioner: Partitioner) -> None:
    """Raises ValueError naming the fix when the global batch does not split evenly."""
    problem = config.batch_layout_problem(partitioner.num_batch_shards)
    if problem:
        raise ValueError(f"{problem} on mesh {dict(partitioner.mesh.shape)}")


def shard_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` (leaves with shape and dtype) under `shardings` (a
    matching tree of NamedShardings): shard shapes x itemsize."""
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    return sum(
        math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
        for x, s in zip(leaves, specs)
    )


def state_bytes_per_device(config: TrainConfig, partitioner: Partitioner) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) one device holds: shard shapes x itemsize."""
    optimizer = make_optimizer(config.optimizer_config, config.train_steps)
    abstract = abstract_train_state(config.model_config, optimizer)
    shardings = train_state_shardings(config.model_config, optimizer, partitioner)
    return (
        shard_bytes(abstract.params, shardings.params),
        shard_bytes(abstract.opt_state, shardings.opt_state),
    )


def matmul_flops(jaxpr: Any) -> float:
    """2·M·N·K summed over the dot_generals of a jaxpr: scan bodies times their length, the
    larger branch of a cond, other sub-jaxprs (jit, remat, custom_vjp, while bodies) once."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = math.prod(lhs_shape[i] for i in lhs_contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted
        elif name == "scan":
            total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            total += sum(matmul_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def _sub_jaxprs(params: Mapping[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
    return found


def compile_train_executable(
    config: TrainConfig, partitioner: Partitioner, progress: ProgressCallback = lambda stage: None
) -> tuple[jax.stages.Compiled, float, float]:
    """Trace, lower and compile the config's train step on abstract inputs.

    Returns (the compiled step, its traced matmul FLOPs, seconds spent). Calls `progress` after
    each stage. Raises DoesNotFit when the compiler runs out of device memory.
    """
    optimizer = make_optimizer(config.optimizer_config, config.train_steps)
    model_config = planned_model_config(config.model_config, _platform(partitioner))
    step = make_train_step(config.replace(model_config=model_config), partitioner)
    shardings = train_state_shardings(config.model_config, optimizer, partitioner)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_train_state(config.model_config, optimizer),
        shardings,
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=partitioner.replicated)
    start = time.perf_counter()
    traced = step.trace(state, abstract_batch(config, partitioner), rng)
    flops = matmul_flops(traced.jaxpr.jaxpr)
    progress("traced")
    lowered = traced.lower()
    progress("lowered")
    compiled = compile_lowered(lowered)
    seconds = time.perf_counter() - start
    progress("compiled")
    return compiled, flops, seconds


def compile_train_step(
    config: TrainConfig, partitioner: Partitioner, progress: ProgressCallback = lambda stage: None
) -> tuple[CompiledStep, float]:
    """The config's train step compiled on abstract inputs: (its CompiledStep, seconds spent)."""
    compiled, flops, seconds = compile_train_executable(config, partitioner, progress)
    return measure_compiled(compiled, flops), seconds


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """`lowered.compile()`; raises DoesNotFit when the compiler runs out of device memory."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error):
            raise DoesNotFit(_out_of_memory_summary(str(error))) from error
        raise


def measure_compiled(compiled: jax.stages.Compiled, matmul_flops: float) -> CompiledStep:
    """The compiler's per-device memory and cost figures of any compiled program, with the
    matmul FLOPs counted on its trace."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    return CompiledStep(
        argument_bytes=float(memory.argument_size_in_bytes),
        output_bytes=float(memory.output_size_in_bytes),
        alias_bytes=float(memory.alias_size_in_bytes),
        temp_bytes=float(memory.temp_size_in_bytes),
        generated_code_bytes=float(memory.generated_code_size_in_bytes),
        xla_flops_per_device=float(cost.get("flops", float("nan"))),
        matmul_flops=matmul_flops,
        optimal_seconds=float(cost.get("optimal_seconds", float("nan"))),
    )


class DoesNotFit(Exception):
    """The compiler found no memory layout that fits the device (the TPU compiler's verdict)."""


def _out_of_memory_summary(message: str) -> str:
    """The compiler's out-of-memory lines ('Ran out of memory in memory space hbm. Used 120G of
    95.74G hbm. Exceeded hbm capacity by 24.3G.'), without the allocation listing."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    wanted = [line for line in lines if "memory" in line.lower() or "capacity" in line.lower()]
    return " ".join(wanted[:3] or lines[:1])


def _platform(partitioner: Partitioner) -> str:
    return partitioner.mesh.devices.flat[0].platform


def planned_model_config(config: ModelConfig, platform: str) -> ModelConfig:
    """The model as compiled for `platform`: an attention kernel that does not exist there
    (cuDNN off GPU, splash off TPU) is planned as XLA's dot_product attention, which
    materialises the scores, so the planned memory is an upper bound. CPU-only program shapes
    left at "auto" (cotangent barriers, flat Dense products) are off for a TPU or GPU, whose
    plan is made on a CPU host."""
    native = {"cudnn": "gpu", "splash": "tpu"}.get(config.attention_impl)
    kind = "gpu" if platform in ("gpu", "cuda", "rocm") else platform
    if native is not None and kind != native:
        config = config.replace(attention_impl="dot_product")
    if kind != "cpu":
        config = config.replace(
            **{
                name: "off"
                for name in ("cotangent_barriers", "flat_dense", "split_attention_heads")
                if getattr(config, name) == "auto"
            }
        )
    return config


def extrapolation_depths(k: int) -> tuple[Depths, Depths, Depths]:
    """The three (encoder, decoder) depths compiled to extrapolate from k layers."""
    if k < 1:
        raise ValueError(f"extrapolate_from_layers must be >= 1, got {k}")
    return (k, k), (2 * k, k), (k, 2 * k)


def extrapolate_linearly(
    measured: Mapping[Depths, CompiledStep], k: int, target: Depths
) -> CompiledStep:
    """Every field of the CompiledSteps at `extrapolation_depths(k)` extended linearly in the
    encoder and decoder depth to `target`: base + slope_enc·(E - k) + slope_dec·(D - k).

    A program that does not run the encoder (one decoder step) may leave out the (2k, k)
    point: its encoder slope is then zero."""
    base_depth, enc_depth, dec_depth = extrapolation_depths(k)
    base, dec = measured[base_depth], measured[dec_depth]
    enc = measured.get(enc_depth, base)
    values = {}
    for field in dataclasses.fields(CompiledStep):
        b, e, d = (getattr(x, field.name) for x in (base, enc, dec))
        values[field.name] = b + (e - b) / k * (target[0] - k) + (d - b) / k * (target[1] - k)
    return CompiledStep(**values)


def _extrapolation_warnings(
    measured: Mapping[Depths, CompiledStep], extrapolated: CompiledStep
) -> tuple[str, ...]:
    """Say so when a deeper model is predicted to need less than a shallower one compiled."""
    found = []
    for name in ("argument_bytes", "temp_bytes"):
        smallest = min(getattr(step, name) for step in measured.values())
        if getattr(extrapolated, name) < smallest:
            found.append(
                f"extrapolated {name} ({getattr(extrapolated, name):.4g}) is below the "
                f"smallest compiled value ({smallest:.4g}): memory is not linear in "
                "depth at these depths; extrapolate from more layers or compile the "
                "full depth"
            )
    return tuple(found)


def make_plan(
    config: TrainConfig,
    *,
    devices: Sequence[Any] | None = None,
    extrapolate_from_layers: int | None = None,
    progress: ProgressCallback = lambda stage: None,
) -> Plan:
    """Plan `config` on `devices` (default: the JAX devices): compile at the configured depth, or at
    the three shallow depths of `extrapolate_from_layers` and extrapolate. Raises ValueError
    when the mesh or batch does not fit the devices."""
    partitioner = Partitioner(config.mesh_config, config.rules, devices=devices)
    check_batch_layout(config, partitioner)
    params_bytes, optimizer_bytes = state_bytes_per_device(config, partitioner)
    batch = abstract_batch(config, partitioner)
    batch_bytes = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in batch.values()
    )
    if extrapolate_from_layers is None:
        depths: tuple[Depths, ...] = (config.depths,)
    else:
        depths = extrapolation_depths(extrapolate_from_layers)
        too_deep = [d for d in depths if d[0] > config.depths[0] or d[1] > config.depths[1]]
        if too_deep:
            raise ValueError(
                f"extrapolate_from_layers={extrapolate_from_layers} needs depths "
                f"{list(depths)}, deeper than the configured {config.depths}; "
                "choose a smaller value or plan without extrapolation"
            )
    measured, seconds = {}, 0.0
    for depth in depths:
        measured[depth], spent = compile_train_step(
            config.with_depths(depth), partitioner, lambda stage, d=depth: progress(f"{d}: {stage}")
        )
        seconds += spent
    compiled = (
        measured[config.depths]
        if extrapolate_from_layers is None
        else extrapolate_linearly(measured, extrapolate_from_layers, config.depths)
    )
    warnings = _extrapolation_warnings(measured, compiled) if extrapolate_from_layers else ()
    lengths = config.sequence_length
    return Plan(
        config=config,
        num_devices=partitioner.mesh.size,
        device_kind=partitioner.mesh.devices.flat[0].device_kind,
        mesh_shape=dict(partitioner.mesh.shape),
        rules_name=partitioner.rules_name,
        num_params=count_params(param_shapes(training_model_config(config.model_config))),
        params_bytes=params_bytes,
        optimizer_state_bytes=optimizer_bytes,
        batch_bytes=batch_bytes,
        compiled=compiled,
        compiled_points=tuple(measured.items()),
        extrapolated=extrapolate_from_layers is not None,
        warnings=warnings,
        model_flops_per_step=train_flops_per_step(
            config.model_config, config.batch_size, int(lengths["inputs"]), int(lengths["targets"])
        ),
        compile_seconds=seconds,
        platform=_platform(partitioner),
    )


class StepTimeUnavailable(ValueError):
    """The cost model gave no usable step time (non-positive optimal_seconds) for a layout the
    compiler accepted; the memory plan stands."""


@dataclasses.dataclass(frozen=True)
class StepTimeEstimate:
    """The TPU cost model's seconds for one whole train step (extrapolated), and how: the
    per-microbatch `optimal_seconds` of each compiled (encoder, decoder) depth."""

    seconds: float
    points: tuple[tuple[Depths, float], ...]
    microbatches: int
    extrapolated: bool
    compile_seconds: float
    uncosted_kernel_seconds: float = 0.0  # Pallas kernels the cost model does not see
    slices: int = 1  # > 1: timed on one of these slices, with its share of the batch

    def mfu(self, model_flops_per_step: float, devices: int, peak_flops: float) -> float:
        """The model FLOPs utilisation this step time implies at `peak_flops` per device."""
        return model_flops_per_step / (devices * peak_flops * self.seconds)


def timing_config(config: TrainConfig) -> TrainConfig:
    """One microbatch of `config` as a whole step, layers unrolled: what `estimate_step_time`
    compiles, so that the cost model sees every layer (it visits a loop body once)."""
    return config.replace(
        model_config=config.model_config.replace(scan_layers=False),
        batch_size=config.batch_size // config.grad_accum_steps,
        grad_accum_steps=1,
    )


def timing_depths(config: TrainConfig, layers: int) -> tuple[Depths, ...]:
    """The depths `estimate_step_time` compiles: those of `extrapolation_depths(layers)`, or the
    configured depth when the model is not deeper than that."""
    if min(config.depths) >= 2 * layers:
        return extrapolation_depths(layers)
    return (config.depths,)


def one_slice_share(
    config: TrainConfig, devices: Sequence[Any]
) -> tuple[TrainConfig, list[Any], int]:
    """(config, devices, slices): for devices of several TPU slices, the first slice's devices
    and `config` with that slice's share of the global batch; otherwise everything unchanged.

    The TPU cost model gives cross-slice (DCN) collectives no meaningful time (it returns a
    negative optimal_seconds), so a multi-slice step is timed as one slice's step; the DCN
    traffic is priced apart (`alexatm_jax.dcn`)."""
    slices = sorted({getattr(d, "slice_index", 0) for d in devices})
    if len(slices) == 1:
        return config, list(devices), 1
    first = [d for d in devices if d.slice_index == slices[0]]
    shards = Partitioner(config.mesh_config, config.rules, devices=devices).num_batch_shards
    local = Partitioner(config.mesh_config, config.rules, devices=first).num_batch_shards
    return config.replace(batch_size=config.batch_size * local // shards), first, len(slices)


def estimate_step_time(
    config: TrainConfig,
    devices: Sequence[Any],
    *,
    layers: int = 2,
    peak_flops_per_device: float | None = None,
    progress: ProgressCallback = lambda stage: None,
) -> StepTimeEstimate:
    """The TPU cost model's time for one step of `config` on `devices`.

    Compiles `timing_config(config)` at (layers, layers), (2·layers, layers) and (layers, 2·layers)
    and extrapolates its `optimal_seconds` linearly to the configured depth (a model no deeper
    than 2·layers is compiled whole), times the number of microbatches. The optimizer update,
    counted once per microbatch that way, is under 0.1% of a 20B step. The cost model gives
    Pallas kernels (splash attention) no time: their matmul FLOPs are added at
    `peak_flops_per_device` (a lower bound on their time). Devices of several slices are timed
    as one slice (`one_slice_share`). Raises ValueError when the compiler gives no cost model
    (not a TPU) or the batch does not split.
    """
    config, devices, slices = one_slice_share(config, devices)
    micro = timing_config(config)
    partitioner = Partitioner(micro.mesh_config, micro.rules, devices=devices)
    check_batch_layout(micro, partitioner)
    depths = timing_depths(config, layers)
    extrapolated = depths != (config.depths,)
    measured, spent = {}, 0.0
    for depth in depths:
        measured[depth], seconds = compile_train_step(
            micro.with_depths(depth),
            partitioner,
            lambda stage, d=depth: progress(f"timing {d}: {stage}"),
        )
        spent += seconds
    if any(math.isnan(step.optimal_seconds) for step in measured.values()):
        raise ValueError(
            f"the {_platform(partitioner)} compiler reports no optimal_seconds: "
            "step-time estimates need the TPU compiler (--topology)"
        )
    if any(not step.optimal_seconds > 0 for step in measured.values()):
        times = ", ".join(
            f"{d[0]}+{d[1]} layers {m.optimal_seconds:.4g} s" for d, m in measured.items()
        )
        raise StepTimeUnavailable(
            f"the TPU cost model gives non-positive step times for this layout ({times}): it "
            "cannot price some of its collectives (seen on v4 slices and on every v6e slice); "
            "estimate the time with --devices N --peak_tflops P --mfu M instead"
        )
    step = (
        extrapolate_linearly(measured, layers, config.depths)
        if extrapolated
        else measured[config.depths]
    )
    kernel_seconds = 0.0
    if planned_model_config(config.model_config, _platform(partitioner)).attention_impl == "splash":
        if not peak_flops_per_device:
            raise ValueError(
                "splash attention's kernels are not in the cost model: give "
                "peak_flops_per_device to add their time"
            )
        lengths = config.sequence_length
        kernel_seconds = splash_kernel_flops(
            config.model_config, config.batch_size, int(lengths["inputs"]), int(lengths["targets"])
        ) / (len(devices) * peak_flops_per_device)
    return StepTimeEstimate(
        seconds=step.optimal_seconds * config.grad_accum_steps + kernel_seconds,
        uncosted_kernel_seconds=kernel_seconds,
        points=tuple((depth, m.optimal_seconds) for depth, m in measured.items()),
        microbatches=config.grad_accum_steps,
        extrapolated=extrapolated,
        compile_seconds=spent,
        slices=slices,
    )
