"""Choose and build this process's batch source: a SeqIO stream or synthetic batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alexatm_jax.data.global_batches import HostBatchSource
from alexatm_jax.data.synthetic import SyntheticHostBatches

DATA_SOURCES = ("seqio", "synthetic")


def make_host_source(
    kind: str,
    *,
    mixture: str,
    split: str,
    sequence_length: Mapping[str, int],
    seed: int,
    shard_index: int,
    num_shards: int,
    per_host_batch_size: int,
    vocab_size: int,
    decoder_start_token_id: int,
    data_dir: str | None,
    vocab_path: str | None,
    pack: bool,
    repeat: bool,
    resume_state: Mapping[str, Any] | None = None,
    resume_mode: str = "exact",
) -> HostBatchSource:
    """A `HostBatchSource` of `kind` ('seqio' reads `mixture`; 'synthetic' draws random ids).

    `resume_mode` ('exact' or 'reseed', see `alexatm_jax.data.seqio_batches`) applies to SeqIO
    streams; synthetic streams always resume exactly (in constant time).
    """
    if kind == "synthetic":
        return SyntheticHostBatches(
            vocab_size=vocab_size,
            sequence_length=dict(sequence_length),
            per_host_batch_size=per_host_batch_size,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            decoder_start_token_id=decoder_start_token_id,
            resume_state=dict(resume_state) if resume_state else None,
        )
    if kind == "seqio":
        from alexatm_jax.data.seqio_batches import SeqioHostBatches

        return SeqioHostBatches(
            mixture=mixture,
            sequence_length=sequence_length,
            split=split,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            per_host_batch_size=per_host_batch_size,
            data_dir=data_dir,
            vocab_path=vocab_path,
            pack=pack,
            repeat=repeat,
            decoder_start_token_id=decoder_start_token_id,
            resume_state=resume_state,
            resume_mode=resume_mode,
        )
    raise ValueError(f"data_source must be one of {DATA_SOURCES}, got {kind!r}")
