"""Per-host batches from a SeqIO task or mixture (`tasks.get_dataset`), resumable exactly.

Iterator state, and why: `tasks.get_dataset` is deterministic for a given (mixture, split, seed,
sequence lengths, shard) — seeded stateless TF ops, deterministic tf.data ordering — so a
position in a stream is fully described by the stream's seed and the number of examples this
shard has read from it. That is the whole state: a few bytes of JSON, identical on every host.
We prefer it over checkpointing the tf.data iterator (`tf.train.Checkpoint(iterator=...)`), which
writes every host's shuffle and prefetch buffers (large, per-host files next to a sharded Orbax
checkpoint) and breaks when the pipeline code changes.

Two ways to resume (`resume_mode`):
- "exact" (default): rebuild the stream and skip the examples already read. Bit-exact
  continuation; the skip re-runs the input pipeline over those examples (measured in
  docs/training.md#data-the-bridge-and-exact-resume: about as long as producing them, so it
  grows with the run).
- "reseed": start a fresh stream whose seed is derived from (seed, examples consumed so far):
  constant-time, never repeats the same order, but not the exact sequence of an uninterrupted
  run. Meant for very long runs whose skip would take too long.

Counting examples rather than batches lets a run resume with another per-host batch size. When
the stream's identity changed (other mixture, split, lengths or number of data shards), exact
continuation is impossible: a warning says so, and the new stream skips the same number of
examples so that at least the beginning is not repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from alexatm_jax.model.params import MODEL_INPUT_FEATURES

logger = logging.getLogger(__name__)

TRAINING_FEATURES = MODEL_INPUT_FEATURES + ("decoder_target_tokens", "decoder_loss_weights")
STATE_FORMAT = 2
RESUME_MODES = ("exact", "reseed")


def stream_identity(
    *, mixture: str, split: str, sequence_length: Mapping[str, int], num_shards: int, pack: bool
) -> dict[str, Any]:
    """The JSON fields that must match for a saved position to mean the same examples."""
    return {
        "mixture": mixture,
        "split": split,
        "sequence_length": {k: int(v) for k, v in sorted(sequence_length.items())},
        "num_shards": int(num_shards),
        "pack": bool(pack),
    }


def derived_seed(seed: int, examples_consumed: int) -> int:
    """The seed of a stream restarted after `examples_consumed` examples ("reseed" mode)."""
    return (int(seed) * 1_000_003 + int(examples_consumed)) % (2**31 - 1)


def build_dataset(
    *,
    mixture: str,
    split: str,
    seed: int,
    sequence_length: Mapping[str, int],
    shard_index: int,
    num_shards: int,
    data_dir: str | None,
    vocab_path: str | None,
    pack: bool,
    repeat: bool,
    decoder_start_token_id: int,
) -> Any:
    """The deterministic `tf.data.Dataset` of EncDec feature dicts for one data shard.

    `repeat=True` cycles through the split forever, else it is read once.
    """
    import tasks  # imported here: TensorFlow and SeqIO load only when a SeqIO source is built

    return tasks.get_dataset(
        mixture,
        sequence_length=dict(sequence_length),
        split=split,
        seed=seed,
        shard_index=shard_index,
        num_shards=num_shards,
        data_dir=data_dir,
        vocab_path=vocab_path,
        pack=pack,
        num_epochs=None if repeat else 1,
        decoder_start_id=decoder_start_token_id,
    )


def check_dataset(*, mixture: str, data_dir: str | None, vocab_path: str | None) -> None:
    """Register what `mixture` needs without reading any data, so a missing or empty DATA_DIR or
    an unknown mixture fails (FileNotFoundError / ValueError naming the fix) before a run
    touches its MODEL_DIR."""
    import dataclasses

    import tasks

    config = tasks.MixtureConfig()
    tasks.register_for(
        mixture,
        data_dir=data_dir,
        config=dataclasses.replace(config, vocab_path=vocab_path) if vocab_path else config,
    )


def pipeline_report() -> tuple[dict[str, int], dict[str, str]]:
    """(the input pipeline's counters over all tasks, {path: why} of the files it skipped) of
    this process; see tasks/counters.py."""
    import tasks

    return tasks.pipeline_counter_totals(), tasks.bad_files()


class SeqioHostBatches:
    """This process's batches `{feature: int32 [per_host_batch_size, length]}` of a SeqIO stream.

    `repeat=True` (training) cycles through a finite split forever; `repeat=False` (evaluation)
    raises StopIteration at its end. `resume_state` is a previous `state()`.
    """

    def __init__(
        self,
        *,
        mixture: str,
        sequence_length: Mapping[str, int],
        split: str,
        seed: int,
        shard_index: int,
        num_shards: int,
        per_host_batch_size: int,
        data_dir: str | None = None,
        vocab_path: str | None = None,
        pack: bool = True,
        repeat: bool = True,
        decoder_start_token_id: int = 0,
        resume_state: Mapping[str, Any] | None = None,
        resume_mode: str = "exact",
    ) -> None:
        import tensorflow as tf

        if resume_mode not in RESUME_MODES:
            raise ValueError(f"resume_mode must be one of {RESUME_MODES}, got {resume_mode!r}")
        self.per_host_batch_size = per_host_batch_size
        self.identity = stream_identity(
            mixture=mixture,
            split=split,
            sequence_length=sequence_length,
            num_shards=num_shards,
            pack=pack,
        )
        self.examples_consumed = 0  # in total, over every stream of the run
        self.stream_seed, self.stream_position = int(seed), 0
        if resume_state:
            self._resume(resume_state, resume_mode, seed)
        dataset = build_dataset(
            mixture=mixture,
            split=split,
            seed=self.stream_seed,
            sequence_length=sequence_length,
            shard_index=shard_index,
            num_shards=num_shards,
            data_dir=data_dir,
            vocab_path=vocab_path,
            pack=pack,
            repeat=repeat,
            decoder_start_token_id=decoder_start_token_id,
        )
        dataset = dataset.skip(self.stream_position)
        dataset = dataset.batch(per_host_batch_size, drop_remainder=True)
        self._iterator = dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def _resume(self, state: Mapping[str, Any], mode: str, seed: int) -> None:
        if state.get("source") != "seqio" or state.get("format") != STATE_FORMAT:
            raise ValueError(f"cannot resume a SeqIO stream from data state {dict(state)}")
        self.examples_consumed = int(state["examples_consumed"])
        if mode == "reseed":
            self.stream_seed = derived_seed(seed, self.examples_consumed)
            return
        self.stream_seed = int(state["stream_seed"])
        self.stream_position = int(state["stream_position"])
        if state.get("stream") != self.identity:
            logger.warning(
                "the data stream changed since the checkpoint (saved %s, now %s): the "
                "run cannot continue the same example order; skipping the %d examples "
                "per shard read so far in the new stream",
                state.get("stream"),
                self.identity,
                self.stream_position,
            )

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch (int32 arrays of the training features present in the stream)."""
        batch = next(self._iterator)
        self.examples_consumed += self.per_host_batch_size
        self.stream_position += self.per_host_batch_size
        return {k: np.asarray(v, np.int32) for k, v in batch.items() if k in TRAINING_FEATURES}

    def pipeline_report(self) -> tuple[dict[str, int], dict[str, str]]:
        """This process's input-pipeline counters and skipped files (see `pipeline_report`)."""
        return pipeline_report()

    def state(self) -> dict[str, Any]:
        """JSON: examples consumed in total, the current stream's seed and position in it, and
        the stream's identity."""
        return {
            "source": "seqio",
            "format": STATE_FORMAT,
            "examples_consumed": self.examples_consumed,
            "stream_seed": self.stream_seed,
            "stream_position": self.stream_position,
            "stream": dict(self.identity),
        }


def resolve_vocabulary(vocab_path: str | None) -> tuple[str, int]:
    """(path, number of pieces) of the SentencePiece model the SeqIO tasks will use.

    `vocab_path` None resolves like the tasks do: gin's MixtureConfig.vocab_path, then
    `tasks.vocabulary_path()` ($ALEXATM_VOCAB, then the demo vocabulary once it is trained).
    """
    import tasks  # TensorFlow/SeqIO: only when a SeqIO source is used

    path = tasks.vocabulary_path(vocab_path or tasks.MixtureConfig().vocab_path)
    return path, tasks.read_special_ids(path).vocab_size
