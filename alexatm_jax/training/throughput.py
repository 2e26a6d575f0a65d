"""Wall-clock throughput of the training loop between two logging points: step time, tokens/s,
MFU."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from alexatm_jax.training.flops import mfu


class ThroughputMeter:
    """Accumulates steps since the last `report()` and turns them into rates.

    Steps are dispatched asynchronously, so rates are only meaningful when `report()` is called
    right after a host transfer that waited for the last step (the trainer fetches the metrics
    first). `positions_per_step` counts every input and target position of the global batch
    (padding included, as the FLOPs do); target tokens count only real (weighted) targets.
    """

    def __init__(
        self,
        *,
        positions_per_step: int,
        flops_per_step: float,
        num_devices: int,
        peak_flops_per_device: float | None,
    ) -> None:
        self.positions_per_step = positions_per_step
        self.flops_per_step = flops_per_step
        self.num_devices = num_devices
        self.peak_flops_per_device = peak_flops_per_device
        self.restart()

    def restart(self) -> None:
        """Start a new interval now (e.g. after compilation or evaluation)."""
        self._start = time.perf_counter()
        self._steps = 0
        self._target_tokens = jnp.zeros([], jnp.float32)

    def add_step(self, num_target_tokens: jax.Array) -> None:
        """Count one dispatched step and its number of real target tokens (a device scalar)."""
        self._steps += 1
        self._target_tokens = self._target_tokens + num_target_tokens

    def report(self) -> dict[str, float]:
        """Rates over the interval, then restart: `step_time_s` (s/step), `tokens_per_s`
        (input + target positions), `target_tokens_per_s`, and `mfu` (fraction of peak) when
        the device's peak FLOP/s is known. Empty when no step was counted."""
        if self._steps == 0:
            return {}
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        step_time = elapsed / self._steps
        out = {
            "step_time_s": step_time,
            "tokens_per_s": self.positions_per_step * self._steps / elapsed,
            "target_tokens_per_s": float(self._target_tokens) / elapsed,
        }
        if self.peak_flops_per_device:
            out["mfu"] = mfu(
                self.flops_per_step, step_time, self.num_devices, self.peak_flops_per_device
            )
        self.restart()
        return out
