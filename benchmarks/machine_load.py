"""How busy the machine was while a benchmark ran: every benchmark script records it.

    monitor = LoadMonitor()             # before the timed work
    ...
    load = monitor.finish(cores_used=2) # after it: a JSON-ready dict, also printed
    results["machine_load"] = load

It records the 1-minute load average and the number of cores (`cores` before, `cores_after`
after, which only differ if CPUs went on- or offline) before and after the run, samples
the load average every few seconds in between, and measures the CPU time that *other* processes
took while the run lasted (from /proc/stat minus this process's own CPU time). The run is marked
`busy` when the load average was above the number of cores the run uses before it started, or on
average during it by more than half a unit (its own threads count towards the load: a quiet
2-core machine running a 2-thread benchmark shows ~2), or when other processes took more than a
quarter of a core on average. A busy run prints a loud warning: its absolute times are
inflated, and ratios against another library are skewed too (on a loaded machine PyTorch's
spin-waiting OpenMP threads suffer more than XLA, which flatters us).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

OTHERS_BUSY_CORES = 0.25


def _loadavg() -> float:
    return os.getloadavg()[0]


def _machine_busy_seconds() -> float | None:
    """CPU seconds (all cores) the whole machine spent not idle since boot, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class LoadMonitor:
    """Samples the machine's load from construction until `finish`."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.cores = os.cpu_count() or 1
        self.load_before = _loadavg()
        self.started = time.time()
        self._busy0 = _machine_busy_seconds()
        self._own0 = _own_cpu_seconds()
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._samples.append(_loadavg())

    def finish(self, cores_used: int | None = None) -> dict[str, Any]:
        """The record (also kept as `self.result`); `cores_used` defaults to all cores."""
        self._stop.set()
        self._thread.join()
        cores_used = cores_used or self.cores
        elapsed = max(time.time() - self.started, 1e-9)
        load_after = _loadavg()
        samples = self._samples or [load_after]
        busy1 = _machine_busy_seconds()
        others = None
        if busy1 is not None and self._busy0 is not None:
            own = _own_cpu_seconds() - self._own0
            others = max(0.0, (busy1 - self._busy0) - own) / elapsed
        mean_during = sum(samples) / len(samples)
        reasons = []
        # The run's own threads put up to `cores_used` on the load average; more than that
        # (with half a unit of slack for the average's lag) is other work.
        if self.load_before > cores_used or mean_during > cores_used + 0.5:
            reasons.append(
                f"load average (before {self.load_before:.2f}, during "
                f"{mean_during:.2f} on average, max {max(samples):.2f}, after "
                f"{load_after:.2f}) above the {cores_used} core(s) the run uses"
            )
        if others is not None and others > OTHERS_BUSY_CORES:
            reasons.append(f"other processes used {others:.2f} cores on average")
        self.result = {
            "cores": self.cores,
            "cores_after": os.cpu_count() or 1,
            "cores_used": cores_used,
            "load_before": round(self.load_before, 2),
            "load_after": round(load_after, 2),
            "load_mean_during": round(mean_during, 2),
            "load_max_during": round(max(samples), 2),
            "other_processes_cores": None if others is None else round(others, 2),
            "elapsed_s": round(elapsed, 1),
            "busy": bool(reasons),
            "busy_reasons": reasons,
        }
        return self.result

    @staticmethod
    def describe(result: dict[str, Any]) -> str:
        """One line for a quiet run; a loud multi-line warning for a busy one."""
        cores = result["cores"]
        if result.get("cores_after", cores) != cores:
            cores = f"{cores} (then {result['cores_after']})"
        line = (
            f"machine: {cores} cores, run uses {result['cores_used']}; load "
            f"average {result['load_before']:.2f} before, {result['load_mean_during']:.2f} "
            f"during (max {result['load_max_during']:.2f}), {result['load_after']:.2f} "
            "after"
        )
        if result["other_processes_cores"] is not None:
            line += f"; other processes used {result['other_processes_cores']:.2f} cores"
        if not result["busy"]:
            return line + " (quiet)"
        bar = "!" * 78
        return "\n".join(
            [bar, "!! WARNING: THE MACHINE WAS BUSY DURING THIS BENCHMARK", "!! " + line]
            + [f"!! {reason}" for reason in result["busy_reasons"]]
            + [
                "!! Times are inflated and ratios against the reference are skewed;",
                '!! the JSON output is marked "busy": true. Rerun on a quiet machine.',
                bar,
            ]
        )
