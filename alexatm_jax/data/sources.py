"""Choose and build this process's batch source: a SeqIO stream, prepared data read by index,
or synthetic batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alexatm_jax.data.global_batches import HostBatchSource
from alexatm_jax.data.synthetic import SyntheticHostBatches

DATA_SOURCES = ("seqio", "prepared", "synthetic")


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
    prepared_data: str | None = None,
) -> HostBatchSource:
    """A `HostBatchSource` of `kind`: 'seqio' streams `mixture`; 'prepared' reads the data
    `alexatm-data prepare` wrote to `prepared_data` for `mixture` by index; 'synthetic' draws
    random ids.

    `resume_mode` ('exact' or 'reseed', see `alexatm_jax.data.seqio_batches`) applies to SeqIO
    streams; prepared and synthetic streams always resume exactly, in constant time, and
    prepared ones on any number of hosts.
    """
    if kind == "prepared":
        if not pack:
            raise ValueError("prepared data is always packed: set train.pack = True")
        return _prepared_source(
            str(prepared_data),
            mixture=mixture,
            vocab_path=vocab_path,
            split=split,
            sequence_length=sequence_length,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            per_host_batch_size=per_host_batch_size,
            decoder_start_token_id=decoder_start_token_id,
            resume_state=resume_state,
        )
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


def _prepared_source(
    directory: str,
    *,
    shard_index: int,
    num_shards: int,
    per_host_batch_size: int,
    resume_state: Mapping[str, Any] | None,
    **rows: Any,
) -> HostBatchSource:
    """This process's batches of the prepared data in `directory` (`rows`: the arguments of
    `open_prepared_rows`), checked against the registry first."""
    from alexatm_jax.data.prepared_batches import PreparedHostBatches, open_prepared_rows

    prepared_rows, digest, report = open_prepared_rows(directory, **rows)
    return PreparedHostBatches(
        prepared_rows,
        shard_index=shard_index,
        num_shards=num_shards,
        per_host_batch_size=per_host_batch_size,
        preparation_digest=digest,
        report=report,
        resume_state=resume_state,
    )
