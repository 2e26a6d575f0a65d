"""Training metrics sinks: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only the process that owns logging (process 0) writes; the others get a writer that discards.
On resume, lines of `metrics.jsonl` past the restored step are dropped first, so the file always
describes the history that the restored checkpoint continues (a killed run may have logged steps
after its last checkpoint).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _json_number(value: float) -> float | str:
    """JSON has no NaN/Inf: write them as the strings "nan", "inf", "-inf"."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def truncate_metrics_after(path: str, step: int) -> int:
    """Drop the lines of the JSONL file `path` whose `step` is greater than `step`.

    Returns the number of lines removed (0 when the file does not exist).
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return len(lines) - len(kept)


def read_metrics(path: str) -> list[dict]:
    """All records of a `metrics.jsonl` file, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    """Writes scalar metrics to `<model_dir>/metrics.jsonl` and `<model_dir>/tensorboard/`.

    `enabled=False` (non-zero processes) turns every method into a no-op.
    """

    def __init__(self, model_dir: str, *, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.jsonl_path = os.path.join(model_dir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(model_dir, TENSORBOARD_DIR)
        self._jsonl = None
        self._summary = None
        if not enabled:
            return
        os.makedirs(model_dir, exist_ok=True)
        truncate_metrics_after(self.jsonl_path, resume_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
        self._summary = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Append one record `{"step": step, **scalars}` and the same scalars to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _json_number(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._summary.add_scalar(name, float(value), int(step))

    def write_text(self, tag: str, text: str, step: int) -> None:
        """Record a text summary (e.g. the operative gin config) in TensorBoard."""
        if self.enabled:
            self._summary.add_text(tag, text, int(step))

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk."""
        if self.enabled:
            self._summary.flush()

    def close(self) -> None:
        """Flush and close both sinks."""
        if self.enabled:
            self._jsonl.close()
            self._summary.close()
            self.enabled = False
