"""Training metrics sinks: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only the process that owns logging (process 0) writes; the others get a writer that discards.
On resume, lines of `metrics.jsonl` past the restored step are dropped first, so the file always
describes the history that the restored checkpoint continues (a killed run may have logged steps
after its last checkpoint).

A remote MODEL_DIR (e.g. gs://bucket/run) cannot be appended to, so the writer then stages both
sinks in a local temporary directory (after downloading the existing metrics.jsonl) and
`sync()` uploads whatever changed as whole files; the trainer calls it after every checkpoint
save, and `close()` calls it last. A local MODEL_DIR is written in place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping

from alexatm_jax.storage import as_path, copy_file, is_remote

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


def rotate_run_logs(model_dir: str) -> list[str]:
    """Rename `metrics.jsonl` and `tensorboard/` of `model_dir` aside (suffix `.before-<time>`)
    so a run that starts again from step 0 keeps the old history. Returns the new names."""
    suffix = time.strftime("before-%Y%m%d-%H%M%S")
    rotated = []
    for name, new_name in (
        (METRICS_FILE, f"metrics.{suffix}.jsonl"),
        (TENSORBOARD_DIR, f"{TENSORBOARD_DIR}.{suffix}"),
    ):
        path = as_path(model_dir) / name
        if path.exists():
            path.rename(path.parent / new_name)
            rotated.append(new_name)
    return rotated


def read_metrics(path: str) -> list[dict]:
    """All records of a `metrics.jsonl` file (local or remote), in file order."""
    lines = as_path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class MetricsWriter:
    """Writes scalar metrics to `<model_dir>/metrics.jsonl` and `<model_dir>/tensorboard/`.

    `enabled=False` (non-zero processes) turns every method into a no-op. For a remote
    `model_dir` the files are staged locally and reach `model_dir` on `sync()` / `close()`.
    """

    def __init__(self, model_dir: str, *, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.jsonl_path = os.path.join(model_dir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(model_dir, TENSORBOARD_DIR)
        self._jsonl = None
        self._summary = None
        self._staging_dir: str | None = None
        self._uploaded: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime_ns) sent
        if not enabled:
            return
        if is_remote(model_dir):
            self._staging_dir = tempfile.mkdtemp(prefix="alexatm-metrics-")
            local_jsonl = os.path.join(self._staging_dir, METRICS_FILE)
            local_tensorboard = os.path.join(self._staging_dir, TENSORBOARD_DIR)
            if as_path(self.jsonl_path).exists():
                copy_file(self.jsonl_path, local_jsonl)
        else:
            os.makedirs(model_dir, exist_ok=True)
            local_jsonl, local_tensorboard = self.jsonl_path, self.tensorboard_dir
        truncate_metrics_after(local_jsonl, resume_step)
        self._jsonl = open(local_jsonl, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

        self._summary = SummaryWriter(local_tensorboard, purge_step=resume_step + 1)

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

    def sync(self) -> int:
        """Flush both sinks and, for a remote model dir, upload the staged files that changed
        since the last upload (whole-file copies). Returns the number of files uploaded (always
        0 for a local model dir)."""
        if not self.enabled:
            return 0
        self._jsonl.flush()
        self._summary.flush()
        return self._upload_changed()

    def _upload_changed(self) -> int:
        if self._staging_dir is None:
            return 0
        remote_root = os.path.dirname(self.jsonl_path)
        uploaded = 0
        for folder, _, names in os.walk(self._staging_dir):
            for name in sorted(names):
                local = os.path.join(folder, name)
                info = os.stat(local)
                signature = (info.st_size, info.st_mtime_ns)
                if self._uploaded.get(local) == signature:
                    continue
                remote = as_path(remote_root) / os.path.relpath(local, self._staging_dir)
                remote.parent.mkdir(parents=True, exist_ok=True)
                copy_file(local, remote)
                self._uploaded[local] = signature
                uploaded += 1
        return uploaded

    def close(self) -> None:
        """Flush and close both sinks; a remote model dir gets the final upload and the local
        staging directory is removed."""
        if self.enabled:
            self._jsonl.close()
            self._summary.close()
            self._upload_changed()
            if self._staging_dir is not None:
                shutil.rmtree(self._staging_dir, ignore_errors=True)
            self.enabled = False
