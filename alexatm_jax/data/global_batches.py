"""Turn this process's numpy batches into global jax.Arrays sharded over the batch mesh axes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np


class HostBatchSource(Protocol):
    """An endless stream of this process's rows of the global batch.

    `state()` is a JSON-serialisable description of the stream position; building the same
    source with that state continues the stream exactly where it was.
    """

    per_host_batch_size: int

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next `[per_host_batch_size, length]` arrays, by feature name."""
        ...

    def state(self) -> dict[str, Any]:
        """The position after the last batch returned."""
        ...


def per_host_batch_size(global_batch_size: int, partitioner: Any) -> int:
    """Rows of the global batch that this process reads (global / number of data shards).

    Raises ValueError (saying what to change) when the global batch does not split evenly over
    the mesh's batch shards.
    """
    shards = partitioner.num_batch_shards
    if global_batch_size < 1 or global_batch_size % shards:
        raise ValueError(
            f"batch_size={global_batch_size} must be a positive multiple of the {shards} batch "
            f"shards of {partitioner} (the product of its replica, data and fsdp axes)"
        )
    _, num_data_shards = partitioner.data_shard_info()
    return global_batch_size // num_data_shards


class GlobalBatches:
    """Iterator of global batches `{feature: jax.Array[global_batch, length]}`.

    Each `next()` reads one host batch from `source` and assembles the global arrays with
    `partitioner.shard_batch` (every process must call it in lockstep).
    """

    def __init__(self, source: HostBatchSource, partitioner: Any) -> None:
        self.source = source
        self.partitioner = partitioner

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return self.partitioner.shard_batch(self.source.next_batch())

    def state(self) -> dict[str, Any]:
        """The source's position (see HostBatchSource.state)."""
        return self.source.state()
