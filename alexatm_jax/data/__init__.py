"""The data bridge: per-host batches (SeqIO or synthetic) -> global, batch-sharded jax.Arrays.

`alexatm_jax.data.seqio_batches` is the only module here that imports TensorFlow/SeqIO (and it
does so when a source is built), so benchmarks can use `SyntheticHostBatches` without them.
"""

from alexatm_jax.data.global_batches import GlobalBatches, HostBatchSource
from alexatm_jax.data.synthetic import SyntheticHostBatches

__all__ = ["GlobalBatches", "HostBatchSource", "SyntheticHostBatches"]
