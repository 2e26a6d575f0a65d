"""Wall time of an evaluation suite per layout, from per-program times and the suite's workload.

The batches are those `InferenceEngine` runs (alexatm_jax/decoding/engine.py): rows sorted by
length (generation: prompt tokens; scoring: input + target tokens), cut into batches of
batch_size rows (the last one padded with copies of a real row), each padded to
`bucket_length` of its longest row (scoring buckets inputs and targets separately), inputs first
cut to max_positions as `Tokenizer.fit` cuts them. A generation batch costs one prefill (encoder
and first decoder step) and one decode step per further token until its longest row ends (greedy
stops when every row has emitted EOS), at most max_new_tokens in all; a scoring batch costs one
teacher-forced pass.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from alexatm_jax.decoding.engine import bucket_length
from alexatm_jax.eval_planning.programs import ProgramTimes
from alexatm_jax.eval_planning.workload import GENERATE, PAPER_DEFAULTS, TaskWorkload
from alexatm_jax.model.config import ModelConfig

DEFAULT_MAX_POSITIONS = ModelConfig.max_positions  # the release's 1024, as the 20B gin sets


@dataclasses.dataclass(frozen=True, order=True)
class BatchShape:
    """One engine call's padded shape, in tokens: input bucket, and the target bucket (scoring)
    or the tokens the batch generates (generation: its longest expected row)."""

    input_len: int
    target_len: int = 0
    steps: int = 0

    def label(self) -> str:
        """'256' (generation, input bucket) or '256x32' (scoring, input x target bucket)."""
        return f"{self.input_len}x{self.target_len}" if self.target_len else str(self.input_len)


def plan_batches(
    workload: TaskWorkload, batch_size: int, max_positions: int = DEFAULT_MAX_POSITIONS
) -> collections.Counter[BatchShape]:
    """How many batches of each shape the engine runs for `workload`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = [min(n, max_positions) for n in workload.input_tokens]
    generate = workload.kind == GENERATE
    if generate:
        outputs = [max(1, min(n, workload.max_new_tokens)) for n in workload.output_tokens]
        key = lambda i: inputs[i]
    else:
        outputs = [min(n, max_positions) for n in workload.output_tokens]
        key = lambda i: inputs[i] + outputs[i]
    order = sorted(range(len(inputs)), key=key)
    shapes: collections.Counter[BatchShape] = collections.Counter()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_len = bucket_length(max(inputs[i] for i in rows), max_positions)
        longest = max(outputs[i] for i in rows)
        if generate:
            shapes[BatchShape(input_len, steps=longest)] += 1
        else:
            shapes[BatchShape(input_len, target_len=bucket_length(longest, max_positions))] += 1
    return shapes


def batch_seconds(
    shape: BatchShape,
    kind: str,
    times: ProgramTimes,
    batch_size: int,
    max_new_tokens: int,
    steps: int | None = None,
) -> float:
    """Seconds of one batch of `shape`; `steps` overrides the tokens a generation batch makes
    (scoring ignores it)."""
    if kind != GENERATE:
        return times.scoring(batch_size, shape.input_len, shape.target_len)
    steps = shape.steps if steps is None else steps
    decode = times.decode_step(batch_size, shape.input_len, max_new_tokens) if steps > 1 else 0.0
    return times.prefill(batch_size, shape.input_len) + (steps - 1) * decode


@dataclasses.dataclass(frozen=True)
class TaskEstimate:
    """One task on one layout: seconds with the expected generation lengths, and seconds if
    every generation batch ran max_new_tokens steps (equal for scoring). buckets: batches per
    padded shape (`BatchShape.label`); truncated_rows: inputs over max_positions tokens."""

    task: str
    kind: str
    source: str
    examples: int
    rows: int
    batches: int
    truncated_rows: int
    buckets: dict[str, int]
    seconds: float
    seconds_at_max_new_tokens: float


def _estimate(
    workload: TaskWorkload,
    shapes: collections.Counter[BatchShape],
    times: ProgramTimes,
    batch_size: int,
    max_positions: int,
) -> TaskEstimate:
    """Prices the planned `shapes` of `workload` with `times`."""
    expected = at_max = 0.0
    buckets: collections.Counter[str] = collections.Counter()
    for shape, count in sorted(shapes.items()):
        args = (shape, workload.kind, times, batch_size, workload.max_new_tokens)
        expected += count * batch_seconds(*args)
        at_max += count * batch_seconds(*args, steps=workload.max_new_tokens)
        buckets[shape.label()] += count
    return TaskEstimate(
        task=workload.task,
        kind=workload.kind,
        source=workload.source,
        examples=workload.examples,
        rows=workload.rows,
        batches=sum(shapes.values()),
        truncated_rows=sum(n > max_positions for n in workload.input_tokens),
        buckets=dict(buckets),
        seconds=expected,
        seconds_at_max_new_tokens=at_max,
    )


def estimate_task(
    workload: TaskWorkload,
    times: ProgramTimes,
    batch_size: int,
    *,
    max_positions: int = DEFAULT_MAX_POSITIONS,
) -> TaskEstimate:
    """Wall time of `workload` on one layout (`times`) at `batch_size` rows per call."""
    shapes = plan_batches(workload, batch_size, max_positions)
    return _estimate(workload, shapes, times, batch_size, max_positions)


@dataclasses.dataclass(frozen=True)
class SuiteEstimate:
    """Every task on every layout (layouts in the caller's order), and the recommendation: the
    fastest layout that fits (None when none fits)."""

    batch_size: int
    max_positions: int
    max_new_tokens: int
    layouts: tuple[str, ...]
    estimates: dict[str, tuple[TaskEstimate, ...]]
    fits: dict[str, bool]
    recommended: str | None

    def total_seconds(self, layout: str) -> float:
        """The suite's seconds on `layout` with the expected generation lengths."""
        return sum(e.seconds for e in self.estimates[layout])

    def total_seconds_at_max_new_tokens(self, layout: str) -> float:
        """The suite's seconds on `layout` if every generation ran max_new_tokens steps."""
        return sum(e.seconds_at_max_new_tokens for e in self.estimates[layout])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: settings, layouts with totals, tasks with seconds per layout."""
        first = self.estimates[self.layouts[0]] if self.layouts else ()
        tasks = []
        for index, task in enumerate(first):
            row = {k: v for k, v in dataclasses.asdict(task).items() if "seconds" not in k}
            row["seconds"] = {n: self.estimates[n][index].seconds for n in self.layouts}
            row["seconds_at_max_new_tokens"] = {
                n: self.estimates[n][index].seconds_at_max_new_tokens for n in self.layouts
            }
            tasks.append(row)
        return {
            "batch_size": self.batch_size,
            "max_positions": self.max_positions,
            "max_new_tokens": self.max_new_tokens,
            "recommended": self.recommended,
            "layouts": [
                {
                    "name": n,
                    "fits": self.fits[n],
                    "total_seconds": self.total_seconds(n),
                    "total_seconds_at_max_new_tokens": self.total_seconds_at_max_new_tokens(n),
                }
                for n in self.layouts
            ],
            "tasks": tasks,
        }


def estimate_suite(
    workloads: Sequence[TaskWorkload],
    times_by_layout: Mapping[str, ProgramTimes],
    batch_size: int,
    *,
    fits: Mapping[str, bool] | None = None,
    max_positions: int = DEFAULT_MAX_POSITIONS,
) -> SuiteEstimate:
    """Every workload on every layout; `fits` says which layouts fit in memory (all when None;
    a layout it leaves out does not fit). The batches are planned once per task and priced per
    layout."""
    layouts = tuple(times_by_layout)
    fit = {n: True if fits is None else bool(fits.get(n, False)) for n in layouts}
    plans = [plan_batches(w, batch_size, max_positions) for w in workloads]
    estimates = {
        n: tuple(
            _estimate(w, shapes, times_by_layout[n], batch_size, max_positions)
            for w, shapes in zip(workloads, plans)
        )
        for n in layouts
    }
    totals = {n: sum(e.seconds for e in estimates[n]) for n in layouts}
    fitting = [n for n in layouts if fit[n]]
    recommended = min(fitting, key=lambda n: totals[n]) if fitting else None
    max_new_tokens = max((w.max_new_tokens for w in workloads), default=0)
    return SuiteEstimate(
        batch_size, max_positions, max_new_tokens, layouts, estimates, fit, recommended
    )


def format_duration(seconds: float) -> str:
    """'1h05m', '12m30s' or '45s'."""
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _family(task: str) -> str:
    """'flores101' for 'flores101:en-de'; the task itself when it has no ':'."""
    return task.split(":", 1)[0]


def _table_rows(estimate: SuiteEstimate) -> list[list[str]]:
    """One row per task, tasks of one family with several members (Flores) summed in one row."""
    first = estimate.estimates[estimate.layouts[0]]
    groups: dict[str, list[int]] = {}
    for index, task in enumerate(first):
        groups.setdefault(_family(task.task), []).append(index)
    rows = []
    for family, members in groups.items():
        tasks = [first[i] for i in members]
        name = f"{family} ({len(members)} tasks)" if len(members) > 1 else tasks[0].task
        sources = {"paper" if t.source == PAPER_DEFAULTS else t.source for t in tasks}
        rows.append(
            [
                name,
                tasks[0].kind,
                sources.pop() if len(sources) == 1 else "mixed",
                str(sum(t.rows for t in tasks)),
                str(sum(t.batches for t in tasks)),
            ]
            + [
                format_duration(sum(estimate.estimates[n][i].seconds for i in members))
                for n in estimate.layouts
            ]
        )
    return rows


def format_table(estimate: SuiteEstimate) -> str:
    """A text table: task rows x layout columns (durations), the totals, which layouts fit and
    the recommended layout (marked `*`), and how the workload was obtained."""
    layouts = estimate.layouts
    if not layouts:
        return "no layouts to compare"
    header = ["task", "kind", "source", "rows", "batches"] + [
        n + ("*" if n == estimate.recommended else "") for n in layouts
    ]
    blank = [""] * 4
    rows = _table_rows(estimate) + [
        ["total"] + blank + [format_duration(estimate.total_seconds(n)) for n in layouts],
        [f"total, {estimate.max_new_tokens} tokens per generation"]
        + blank
        + [format_duration(estimate.total_seconds_at_max_new_tokens(n)) for n in layouts],
        ["fits"] + blank + ["yes" if estimate.fits[n] else "no" for n in layouts],
    ]
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    line = lambda r: "  ".join(
        v.ljust(w) if c < 3 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))
    )
    lines = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(lines + [""] + _notes(estimate))


def _notes(estimate: SuiteEstimate) -> list[str]:
    """The recommendation and how the figures were obtained."""
    first = estimate.estimates[estimate.layouts[0]]
    notes = [
        f"* recommended: {estimate.recommended}, the fastest layout that fits "
        f"({format_duration(estimate.total_seconds(estimate.recommended))})"
        if estimate.recommended
        else "no layout fits"
    ]
    notes.append(
        f"batch {estimate.batch_size} rows; a generation batch runs until its longest expected "
        "output (the references' lengths: greedy output lengths are unknown before running)"
    )
    defaults = [e.task for e in first if e.source == PAPER_DEFAULTS]
    if defaults:
        notes.append(
            f"{len(defaults)} of {len(first)} tasks have no suite data: their sizes are the "
            "published test/dev set sizes and their lengths our estimates "
            "(docs/paper_facts.md#evaluation-sets-sizes-and-typical-lengths)"
        )
    truncated = sum(e.truncated_rows for e in first)
    if truncated:
        notes.append(f"{truncated} inputs exceed {estimate.max_positions} tokens and are cut")
    return notes
