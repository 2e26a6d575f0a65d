"""Bounded skipping of non-finite steps: warn on each, stop the run when they pile up.

The train step skips an update whose loss or gradient norm is NaN/Inf (`metrics['skipped']`).
One such step in a long run is noise; many in a row, or many in a short window, mean the
parameters or the learning rate are broken, and training on would only write checkpoints of a
broken model. `SkippedSteps` watches the flags:

- every skipped step is a warning line naming the step, its loss and gradient norm;
- the run stops (NonFiniteLossError) when more than `max_consecutive` steps in a row, or more
  than `max_fraction` of the last `window` steps, were skipped; `nan_policy='stop'` is the
  special case "stop at the first one";
- `first_step` (the run's first skipped step) tells the trainer which checkpoint is the last
  good one: the newest saved before it, which garbage collection must keep.

The flags are read one step late (after the next step is dispatched), so watching them never
makes the host wait for the device; `flush()` reads everything pending and runs before each
checkpoint, log record and the end of the run. The counts live in the checkpoint's progress JSON,
so a resumed run applies the limits exactly as an uninterrupted one would.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Non-finite steps passed the configured limit (or nan_policy='stop' met one)."""


class SkippedSteps:
    """Counts skipped (non-finite) steps and enforces the limits; see the module docstring.

    `progress` is a checkpoint's progress JSON (or {} for a new run); `describe_last_good()`
    is called to name the last good checkpoint in the error message.
    """

    def __init__(
        self,
        *,
        max_consecutive: int,
        max_fraction: float,
        window: int,
        progress: Mapping[str, Any],
        describe_last_good: Callable[[], str],
        stop_at_first: bool = False,
    ) -> None:
        self.stop_at_first = stop_at_first
        self.max_consecutive = 0 if stop_at_first else max_consecutive
        self.max_in_window = 0 if stop_at_first else math.floor(max_fraction * window)
        self.window = window
        self.total = int(progress.get("skipped_steps", 0))
        self.first_step: int | None = progress.get("first_skipped_step")
        self.recent = collections.deque(int(s) for s in progress.get("recent_skipped_steps", []))
        self._describe_last_good = describe_last_good
        self._pending: collections.deque = collections.deque()

    def progress(self) -> dict[str, Any]:
        """The JSON fields to store in a checkpoint's progress (call after `flush()`)."""
        return {
            "skipped_steps": self.total,
            "first_skipped_step": self.first_step,
            "recent_skipped_steps": list(self.recent),
        }

    def push(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        """Queue step `step`'s metrics; reads (and acts on) the steps queued before it."""
        while self._pending:
            self._observe(*self._pending.popleft())
        self._pending.append((step, metrics))

    def flush(self) -> None:
        """Read every queued step (blocks until the device has computed them)."""
        while self._pending:
            self._observe(*self._pending.popleft())

    def _consecutive(self, step: int) -> int:
        count = 0
        for skipped in reversed(self.recent):
            if skipped != step - count:
                break
            count += 1
        return count

    def _observe(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        while self.recent and self.recent[0] <= step - self.window:
            self.recent.popleft()
        if float(metrics["skipped"]) == 0.0:
            return
        self.total += 1
        if self.first_step is None:
            self.first_step = step
        self.recent.append(step)
        consecutive = self._consecutive(step)
        logger.warning(
            "step %d: non-finite loss (%s) or gradient norm (%s): update skipped (%d in a row, "
            "%d of the last %d steps, %d in the run; limits: %d in a row, %d per %d steps)",
            step,
            float(metrics["loss"]),
            float(metrics["grad_norm"]),
            consecutive,
            len(self.recent),
            self.window,
            self.total,
            self.max_consecutive,
            self.max_in_window,
            self.window,
        )
        if consecutive > self.max_consecutive or len(self.recent) > self.max_in_window:
            which = (
                "the loss or gradient norm is not finite (nan_policy='stop')"
                if self.stop_at_first
                else f"{consecutive} consecutive non-finite steps (limit "
                f"train.max_skipped_steps={self.max_consecutive})"
                if consecutive > self.max_consecutive
                else f"{len(self.recent)} non-finite steps in the last {self.window} (limit "
                f"train.max_skipped_fraction x train.skipped_window = {self.max_in_window})"
            )
            raise NonFiniteLossError(
                f"step {step}: {which}; the run stops without saving this state. "
                f"{self._describe_last_good()}"
            )

    def summary(self) -> str:
        """One line for the end of the run ('' when nothing was skipped)."""
        if not self.total:
            return ""
        return (
            f"Skipped {self.total} non-finite step(s) in the run (first at step "
            f"{self.first_step}; {len(self.recent)} in the last {self.window} steps)"
        )
