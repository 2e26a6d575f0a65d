"""What few-shot evaluation during training costs: each `FewShotEval` hook of a training job
(`train.eval_hooks`), planned by the TPU compiler on the job's own mesh and model, and its share
of the run's wall time at the hook's period.

* layout: the training mesh, its replica x data axes as the layout's data axis (both only split
  rows), its fsdp and tensor axes, and the job's partition rules; the model is the job's
  ModelConfig (parameters in the param_dtype they are trained in);
* batch: the hook's batch_size rounded up to a multiple of the batch shards, as
  `EvalContext.engine` rounds it;
* workload: `suite_workloads(hook.tasks, limit=, max_new_tokens=)` with the paper's set sizes
  and typical lengths: the hook's data_dir is a path of the training job, which planning does
  not read;
* buckets: of the (input, target) buckets that workload's batches use (`plan_batches`), the
  smallest and the largest per program, which keeps a 20B plan to a few compiles; the seconds
  of the others are interpolated between them (`alexatm_jax.eval_planning.programs`).

seconds per evaluation = the suite's total on that layout (`estimate_suite`); share = seconds /
(period x step seconds + seconds), the wall-time share `eval_hooks.time_shares` logs in a run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from alexatm_jax.eval_planning.layout_plan import (
    MEMORY_EXTRAPOLATED,
    BucketPlan,
    LayoutPlan,
    compiles_per_bucket,
    plan_layout,
)
from alexatm_jax.eval_planning.layouts import layout_name
from alexatm_jax.eval_planning.programs import (
    DECODE_STEP,
    PREFILL,
    SCORING,
    Layout,
    ProgramShape,
)
from alexatm_jax.eval_planning.suite_time import (
    BatchShape,
    SuiteEstimate,
    estimate_suite,
    format_duration,
    plan_batches,
)
from alexatm_jax.eval_planning.workload import GENERATE, TaskWorkload, suite_workloads
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.partitioning import resolve_rules
from alexatm_jax.tpu_topology import TpuTarget
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.few_shot_eval import FewShotEval

GIB = 2.0**30
NOTE = (
    "Few-shot evaluation (train.eval_hooks FewShotEval): its prefill, decoder step and scoring "
    "programs were compiled by the TPU compiler on the training mesh, with the job's model and "
    "partition rules, at the smallest and largest length buckets its batches use; seconds are "
    "the cost model's, interpolated between those buckets. The task sizes (capped at the hook's "
    "limit) and lengths are the paper's defaults (docs/paper_facts.md), not the hook's data_dir."
)
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class HookWork:
    """One hook's evaluation as planned before compiling: the job's model, the training mesh
    as a layout, its period in steps, the rounded batch, the workloads and the program shapes."""

    hook: FewShotEval
    config: ModelConfig
    layout: Layout
    period: int
    batch_size: int
    workloads: tuple[TaskWorkload, ...]
    shapes: tuple[ProgramShape, ...]

    def compiles(self, layers: int) -> int:
        """How many compiles `cost` makes with `layers` timing layers."""
        return sum(
            compiles_per_bucket(shape.program, self.config, layers, MEMORY_EXTRAPOLATED)
            for shape in self.shapes
        )

    def cost(
        self,
        devices: Sequence[Any],
        target: TpuTarget,
        *,
        step_seconds: float | None,
        optimizer_state_bytes: float,
        layers: int,
        progress: Progress = lambda stage: None,
    ) -> HookCost:
        """Compile the programs on the training mesh's `devices` and price the suite (module
        doc); step_seconds: the cost model's train step, None without one."""
        start = time.perf_counter()
        plan = plan_layout(
            self.config,
            self.layout,
            devices,
            target,
            self.shapes,
            layers=layers,
            progress=lambda stage: progress(f"few-shot {stage}"),
        )
        seconds = time.perf_counter() - start
        compiled = plan.timed and all(b.compiled is not None for b in plan.buckets)
        suite = None
        if compiled:
            times = {self.layout.name: plan.programs}
            max_positions = self.config.max_positions
            suite = estimate_suite(
                self.workloads, times, self.batch_size, max_positions=max_positions
            )
        memories = [b.memory.total_bytes for b in plan.buckets if b.memory is not None]
        resident = max(memories) + optimizer_state_bytes if compiled and memories else None
        return HookCost(self, plan, suite, step_seconds, resident, seconds)


@dataclasses.dataclass(frozen=True)
class HookCost:
    """One hook's planned cost. seconds: one evaluation (None when a program did not compile);
    step_seconds: the cost model's train step (None without one); resident_bytes: per chip, the
    largest program's memory plus the optimizer state that stays in HBM meanwhile;
    compile_seconds: the time its compiles took here."""

    work: HookWork
    layout_plan: LayoutPlan
    suite: SuiteEstimate | None
    step_seconds: float | None
    resident_bytes: float | None
    compile_seconds: float

    @property
    def seconds(self) -> float | None:
        """Seconds of one evaluation on the training mesh."""
        return self.suite.total_seconds(self.layout_plan.layout.name) if self.suite else None

    @property
    def training_seconds(self) -> float | None:
        """Seconds of training between two evaluations: period x step seconds."""
        return None if self.step_seconds is None else self.work.period * self.step_seconds

    @property
    def share(self) -> float | None:
        """The share of the run's wall time the evaluation takes: eval / (training + eval)."""
        if self.seconds is None or self.training_seconds is None:
            return None
        return self.seconds / (self.training_seconds + self.seconds)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the hook's settings, layout, buckets, seconds and share."""
        hook, layout = self.work.hook, self.layout_plan.layout
        suite = self.suite
        return {
            "hook": hook.name,
            "tasks": list(hook.tasks),
            "limit": hook.limit,
            "max_new_tokens": hook.max_new_tokens,
            "batch_size": self.work.batch_size,
            "configured_batch_size": hook.batch_size,
            "period_steps": self.work.period,
            "layout": {
                "name": layout.name,
                "data": layout.data,
                "fsdp": layout.fsdp,
                "tensor": layout.tensor,
                "rules": _rules_name(layout.rules),
            },
            "workload_source": "paper defaults",
            "buckets": [_bucket_json(b) for b in self.layout_plan.buckets],
            "not_compiled": self.layout_plan.skipped,
            "seconds_per_evaluation": self.seconds,
            "seconds_per_evaluation_at_max_new_tokens": (
                suite.total_seconds_at_max_new_tokens(layout.name) if suite else None
            ),
            "step_seconds": self.step_seconds,
            "training_seconds_between_evaluations": self.training_seconds,
            "share_of_time": self.share,
            "share_formula": "seconds_per_evaluation / (period_steps x step_seconds + "
            "seconds_per_evaluation)",
            "resident_bytes_per_chip": self.resident_bytes,
            "fits": self.layout_plan.fits
            and self.resident_bytes is not None
            and self.resident_bytes <= self.layout_plan.hbm_bytes,
            "tasks_detail": suite.to_json()["tasks"] if suite else [],
            "compile_seconds": self.compile_seconds,
        }


def _rules_name(rules: Any) -> str:
    """A rule set's name, or 'custom' for explicit rule pairs."""
    return rules if isinstance(rules, str) else "custom"


def _bucket_json(bucket: BucketPlan) -> dict[str, Any]:
    """One compiled bucket: its lengths, cost-model seconds and whether it fit."""
    shape = bucket.shape
    return {
        "program": shape.program,
        "input_len": shape.input_len,
        "target_len": shape.target_len,
        "cache_len": shape.cache_len,
        "cost_model_seconds": bucket.seconds,
        "extrapolated": bucket.extrapolated,
        "does_not_fit": bucket.does_not_fit,
    }


def few_shot_hooks(job: TrainConfig) -> list[tuple[FewShotEval, int]]:
    """(hook, period in steps) of each FewShotEval hook that runs: its `period`, else the job's
    eval_period (0 for both: it never runs, and is left out)."""
    hooks = []
    for hook in job.eval_hooks:
        period = (hook.period or job.eval_period) if isinstance(hook, FewShotEval) else 0
        if period > 0:
            hooks.append((hook, period))
    return hooks


def training_layout(job: TrainConfig, devices: Sequence[Any]) -> Layout:
    """The training mesh over `devices` (one slice) as an evaluation Layout (module doc)."""
    replica, data, fsdp, tensor = job.mesh_config.axis_sizes(len(devices))
    rules = job.rules if isinstance(job.rules, str) else resolve_rules(job.rules)
    return Layout(layout_name(replica * data, fsdp, tensor), replica * data, fsdp, tensor, rules)


def extreme_buckets(shapes: Sequence[BatchShape]) -> list[BatchShape]:
    """The smallest and the largest of `shapes` by padded positions (input + target), each once."""
    ordered = sorted(set(shapes), key=lambda s: (s.input_len + s.target_len, s))
    return list(dict.fromkeys([ordered[0], ordered[-1]])) if ordered else []


def hook_shapes(
    workloads: Sequence[TaskWorkload], batch: int, max_new_tokens: int, max_positions: int
) -> list[ProgramShape]:
    """Prefill and decoder step at the extreme input buckets of the generation batches, scoring
    at the extreme (input, target) buckets of the scoring batches."""
    generated: list[BatchShape] = []
    scored: list[BatchShape] = []
    for workload in workloads:
        used = plan_batches(workload, batch, max_positions)
        if workload.kind == GENERATE:
            generated.extend(BatchShape(s.input_len) for s in used)
        else:
            scored.extend(used)
    shapes = []
    for s in extreme_buckets(generated):
        shapes.append(ProgramShape(PREFILL, batch, s.input_len, cache_len=max_new_tokens))
        shapes.append(ProgramShape(DECODE_STEP, batch, s.input_len, cache_len=max_new_tokens))
    for s in extreme_buckets(scored):
        shapes.append(ProgramShape(SCORING, batch, s.input_len, target_len=s.target_len))
    return shapes


def hook_work(job: TrainConfig, devices: Sequence[Any]) -> list[HookWork]:
    """What each running FewShotEval hook of `job` evaluates on its training mesh over
    `devices`, one slice (module doc)."""
    found = []
    layout = training_layout(job, devices)
    config = job.model_config
    for hook, period in few_shot_hooks(job):
        shards = layout.batch_shards
        batch = -(-hook.batch_size // shards) * shards
        workloads = tuple(
            suite_workloads(hook.tasks, limit=hook.limit, max_new_tokens=hook.max_new_tokens)
        )
        shapes = hook_shapes(workloads, batch, hook.max_new_tokens, config.max_positions)
        found.append(HookWork(hook, config, layout, period, batch, workloads, tuple(shapes)))
    return found


def text_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The report's few-shot section from `HookCost.to_json()` entries ([] without any)."""
    lines = []
    for entry in entries:
        tasks = ", ".join(entry["tasks"][:4]) + (", ..." if len(entry["tasks"]) > 4 else "")
        buckets = ", ".join(
            f"{b['program']} {b['input_len']}" + (f"x{b['target_len']}" if b["target_len"] else "")
            for b in entry["buckets"]
        )
        lines += [
            "",
            f"Few-shot evaluation during training ('{entry['hook']}': {tasks}; "
            f"{entry['limit']} examples per task, batch {entry['batch_size']}, layout "
            f"{entry['layout']['name']} of the training mesh)",
            f"  compiled buckets: {buckets}",
        ] + _cost_lines(entry)
    return lines


def _cost_lines(entry: dict[str, Any]) -> list[str]:
    """Seconds per evaluation, its share of the wall time and the memory verdict of one entry."""
    seconds = entry["seconds_per_evaluation"]
    if seconds is None:
        why = entry["not_compiled"] or "a program did not fit (the JSON's buckets say which)"
        return [f"  not priced: {why}"]
    duration = f" ({format_duration(seconds)})" if seconds >= 60 else ""
    lines = [
        f"  {seconds:.4g} s{duration} per evaluation, every {entry['period_steps']:,} steps"
        + _share_text(entry)
    ]
    resident = entry["resident_bytes_per_chip"]
    if resident is not None:
        verdict = "fits" if entry["fits"] else "DOES NOT FIT a chip's HBM"
        lines.append(
            f"  memory: {resident / GIB:.2f} GiB per chip, the largest program with the "
            f"optimizer state resident: {verdict}"
        )
    return lines


def _share_text(entry: dict[str, Any]) -> str:
    """', after N x S s = T s of training: P% of the wall time', or why there is no share."""
    if entry["share_of_time"] is None:
        return "; no share of the wall time without the step time"
    return (
        f", after {entry['period_steps']:,} x {entry['step_seconds']:.4g} s = "
        f"{entry['training_seconds_between_evaluations']:.4g} s of training: "
        f"{100 * entry['share_of_time']:.2f}% of the wall time"
    )
