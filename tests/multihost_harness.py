"""Run `alexatm-train` and record the training rows each data shard delivered to this process.

    python tests/multihost_harness.py RECORD_DIR READ_SHARDS [alexatm-train arguments...]

Every host batch the trainer reads from its training source is kept and, when the run ends,
written to `RECORD_DIR/process_<jax.process_index()>.npz` as arrays
`shard<i>of<n>.<feature>` of shape [batches, rows, length] (i, n: the data shard the rows came
from). READ_SHARDS=1 leaves the data path as it is. READ_SHARDS=N>1 is for a one-process
reference of an N-process run: the single process reads data shards 0..N-1 of N, each with
1/N of its rows, and stacks them in shard order, i.e. the global batch that N processes (one
data shard each) assemble. READ_SHARDS=global gives every topology the same global batches:
each process reads the one-shard stream of whole global batches (shard 0 of 1, global batch
size) and keeps the rows of its own data shard, so a checkpoint restored onto another number of
processes or another mesh continues on the same data; its recorded rows are `shard0of1.*`.

When the run restores a checkpoint, the digests of the restored TrainState, computed on the new
mesh (`alexatm_jax.checkpoints.digests.tree_digests`), are written to
`RECORD_DIR/restored_<process>.json` as `{"step": N, "arrays": {name: record}}`, to compare with
the checkpoint's recorded digests. Only the data source and the restore are wrapped; the training
is the real CLI's.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from alexatm_jax.checkpoints import digests
from alexatm_jax.cli import train as train_cli
from alexatm_jax.training import trainer
from alexatm_jax.training.checkpointing import TrainingCheckpointer

_RECORDED: dict[str, list[np.ndarray]] = {}
_RESTORED: dict[str, Any] = {}
GLOBAL = "global"


class RecordingSource:
    """A HostBatchSource that keeps a copy of every batch its inner source returns."""

    def __init__(self, inner: Any, shard_index: int, num_shards: int) -> None:
        self.inner = inner
        self.prefix = f"shard{shard_index}of{num_shards}"
        self.per_host_batch_size = inner.per_host_batch_size

    def next_batch(self) -> dict[str, np.ndarray]:
        """The inner source's next batch (recorded)."""
        batch = self.inner.next_batch()
        for name, rows in batch.items():
            _RECORDED.setdefault(f"{self.prefix}.{name}", []).append(np.array(rows))
        return batch

    def state(self) -> dict[str, Any]:
        """The inner source's position."""
        return self.inner.state()


class StackedShards:
    """One process reading several data shards: batch rows are the shards' rows in order."""

    def __init__(self, sources: list[RecordingSource]) -> None:
        self.sources = sources
        self.per_host_batch_size = sum(s.per_host_batch_size for s in sources)

    def next_batch(self) -> dict[str, np.ndarray]:
        """Each shard's next batch, concatenated along the rows."""
        batches = [s.next_batch() for s in self.sources]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def state(self) -> dict[str, Any]:
        """The positions of every shard's stream."""
        return {"stacked_shards": [s.state() for s in self.sources]}


class RowsOfGlobalBatches:
    """The rows of data shard `shard_index` (of `num_shards`) of a stream of global batches."""

    def __init__(self, inner: RecordingSource, shard_index: int, num_shards: int) -> None:
        self.inner = inner
        self.per_host_batch_size = inner.per_host_batch_size // num_shards
        self.first_row = shard_index * self.per_host_batch_size

    def next_batch(self) -> dict[str, np.ndarray]:
        """This shard's block of rows of the next global batch."""
        rows = slice(self.first_row, self.first_row + self.per_host_batch_size)
        return {k: v[rows] for k, v in self.inner.next_batch().items()}

    def state(self) -> dict[str, Any]:
        """The position of the global stream (the same on every process and topology)."""
        return self.inner.state()


def wrap_sources(read_shards: str) -> None:
    """Make the trainer's training sources record their rows (and read `read_shards` shards,
    or with GLOBAL this shard's rows of whole global batches)."""
    build = trainer.make_host_source

    def make_source(kind: str, **kwargs: Any) -> Any:
        if kwargs["split"] != "train":
            return build(kind, **kwargs)
        if read_shards == GLOBAL:
            shard_index, num_shards = kwargs["shard_index"], kwargs["num_shards"]
            kwargs.update(
                shard_index=0,
                num_shards=1,
                per_host_batch_size=kwargs["per_host_batch_size"] * num_shards,
            )
            return RowsOfGlobalBatches(
                RecordingSource(build(kind, **kwargs), 0, 1), shard_index, num_shards
            )
        shards = int(read_shards)
        if shards == 1:
            return RecordingSource(
                build(kind, **kwargs), kwargs["shard_index"], kwargs["num_shards"]
            )
        if kwargs["num_shards"] != 1 or kwargs.get("resume_state"):
            raise SystemExit("READ_SHARDS > 1 needs a one-process run that does not resume")
        rows = kwargs["per_host_batch_size"] // shards
        sources = []
        for index in range(shards):
            kwargs.update(shard_index=index, num_shards=shards, per_host_batch_size=rows)
            sources.append(RecordingSource(build(kind, **kwargs), index, shards))
        return StackedShards(sources)

    trainer.make_host_source = make_source


def record_restores() -> None:
    """Keep the digests of the TrainState the trainer restores (computed on its mesh)."""
    restore = TrainingCheckpointer.restore_latest

    def restore_and_record(self: TrainingCheckpointer, abstract_state: Any, **options: Any) -> Any:
        restored = restore(self, abstract_state, **options)
        if restored is not None:
            _RESTORED.update(step=restored.step, arrays=digests.tree_digests(restored.state))
        return restored

    TrainingCheckpointer.restore_latest = restore_and_record


def save_records(record_dir: str) -> str:
    """Write the recorded rows of this process; returns the file's path."""
    import jax

    os.makedirs(record_dir, exist_ok=True)
    path = os.path.join(record_dir, f"process_{jax.process_index()}.npz")
    np.savez(path, **{k: np.stack(v) for k, v in _RECORDED.items()})
    if _RESTORED:
        with open(os.path.join(record_dir, f"restored_{jax.process_index()}.json"), "w") as f:
            json.dump(_RESTORED, f)
    return path


if __name__ == "__main__":
    wrap_sources(sys.argv[2])
    record_restores()
    code = train_cli.main(sys.argv[3:])
    save_records(sys.argv[1])
    sys.exit(code)
