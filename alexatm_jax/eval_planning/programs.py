"""Evaluation's programs as a suite estimate sees them: a layout of the slice's chips, and the
seconds each program takes on it at any batch and lengths, from the TPU cost model's seconds at
the few length buckets that were compiled (`alexatm_jax.eval_planning.layout_plan`).

The programs (`alexatm_jax.eval_planning.compiled_programs` builds them):
* prefill: the encoder over [batch, input_len] and the first decoder step, which creates the
  KV cache;
* decode_step: one cached decoder step for [batch] tokens, per generated token;
* scoring: teacher-forced log-probabilities of [batch, target_len] targets.

Between the compiled buckets the seconds are interpolated linearly in the program's roofline
(`alexatm_jax.eval_planning.roofline`): model FLOPs for prefill and scoring, HBM bytes read for a
decoder step. That is linear interpolation in length for a program of one length, and it weighs
the input and target (or cache) positions of the others as the model's work does. Beyond the
buckets the nearest two are extended linearly, and the estimate says it was extrapolated.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from alexatm_jax.eval_planning.roofline import Roofline

PREFILL = "prefill"
DECODE_STEP = "decode_step"
SCORING = "scoring"
PROGRAMS = (PREFILL, DECODE_STEP, SCORING)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh over all the chips of a slice and the partition rules that go with it.

    data: replicas that hold every parameter and split the rows; fsdp: chips that split the
    parameters (on their embed axis) and the rows; tensor: chips that split heads, FFN width and
    vocabulary (Megatron style) and all see the same rows. rules: a `partitioning.RULE_SETS` name
    (or a training job's own (logical, mesh) rule pairs, `training_eval_cost`).
    """

    name: str  # e.g. "data=4", "fsdp=4", "data=2,tensor=2"
    data: int
    fsdp: int
    tensor: int
    rules: str | tuple[tuple[str, Any], ...]  # partition rule set name, or rule pairs

    @property
    def chips(self) -> int:
        """Chips the layout spans."""
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """How many ways a batch's rows are split (data x fsdp)."""
        return self.data * self.fsdp

    @property
    def eval_flags(self) -> str:
        """The `alexatm-eval` options that run this layout (its data axis takes the rest)."""
        return f"--fsdp {self.fsdp} --tensor {self.tensor} --rules {self.rules}"


class ProgramShape(NamedTuple):
    """One program at one batch and length bucket. cache_len is the self-attention cache of
    prefill and decode_step (max_new_tokens), target_len the scored targets; 0 where unused."""

    program: str
    batch: int
    input_len: int
    target_len: int = 0
    cache_len: int = 0


class ProgramTimes(Protocol):
    """One layout, one batch size, from the compiled buckets."""

    def prefill(self, batch: int, input_len: int) -> float:
        """Seconds on the slice for one prefill."""
        ...

    def decode_step(self, batch: int, input_len: int, cache_len: int) -> float:
        """Seconds on the slice for one decoder step (one generated token per row)."""
        ...

    def scoring(self, batch: int, input_len: int, target_len: int) -> float:
        """Seconds on the slice for one scoring call."""
        ...


class Estimate(NamedTuple):
    """Seconds for one program call; extrapolated: outside the compiled buckets' range;
    batch_scaled: a batch other than the compiled one, scaled linearly from it."""

    seconds: float
    extrapolated: bool
    batch_scaled: bool


class PlannedPrograms:
    """`ProgramTimes` from the cost model's seconds at the compiled buckets of one layout.

    bucket_seconds: (shape, cost-model seconds) of every compiled bucket, all at `batch` rows.
    roofline: the layout's `Roofline`, the coordinate the seconds are interpolated in.
    """

    def __init__(
        self,
        layout: Layout,
        batch: int,
        bucket_seconds: Sequence[tuple[ProgramShape, float]],
        roofline: Roofline,
    ) -> None:
        self.layout = layout
        self.batch = batch
        self.roofline = roofline
        self._points: dict[str, list[tuple[float, float]]] = {}
        for shape, seconds in bucket_seconds:
            if shape.batch != batch:
                raise ValueError(f"bucket {shape} was compiled for another batch than {batch}")
            self._points.setdefault(shape.program, []).append((roofline.seconds(shape), seconds))
        for points in self._points.values():
            points.sort()

    def prefill(self, batch: int, input_len: int) -> float:
        """Seconds on the slice for one prefill."""
        return self.estimate(ProgramShape(PREFILL, batch, input_len)).seconds

    def decode_step(self, batch: int, input_len: int, cache_len: int) -> float:
        """Seconds on the slice for one decoder step (one generated token per row)."""
        return self.estimate(
            ProgramShape(DECODE_STEP, batch, input_len, cache_len=cache_len)
        ).seconds

    def scoring(self, batch: int, input_len: int, target_len: int) -> float:
        """Seconds on the slice for one scoring call."""
        return self.estimate(ProgramShape(SCORING, batch, input_len, target_len=target_len)).seconds

    def estimate(self, shape: ProgramShape) -> Estimate:
        """Seconds for `shape`, interpolated between the compiled buckets (module doc); a batch
        other than the compiled one scales the compiled batch's seconds linearly."""
        points = self._points.get(shape.program)
        if not points:
            raise ValueError(f"no compiled {shape.program} bucket for layout {self.layout.name}")
        at_compiled_batch = shape._replace(batch=self.batch)
        seconds, extrapolated = interpolate(points, self.roofline.seconds(at_compiled_batch))
        return Estimate(seconds * shape.batch / self.batch, extrapolated, shape.batch != self.batch)


def interpolate(points: Sequence[tuple[float, float]], x: float) -> tuple[float, bool]:
    """(y at x, whether x lies outside the points) on the piecewise-linear line through
    `points` (sorted (x, y) pairs), extended linearly from the two nearest points outside them.
    One point: y proportional to x. An extension that would not be positive falls back to
    proportional scaling of the nearest point."""
    xs = [p[0] for p in points]
    outside = not xs[0] <= x <= xs[-1]
    if len(points) == 1:
        return points[0][1] * x / points[0][0], outside
    index = min(max(bisect.bisect_left(xs, x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 != x0 else max(y0, y1)
    if y <= 0:
        nearest_x, nearest_y = points[0] if x < xs[0] else points[-1]
        y = nearest_y * x / nearest_x
    return y, outside
