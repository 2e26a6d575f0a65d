"""Random encoder-decoder batches for benchmarks and tests: numpy only, no TensorFlow.

Batch `i` of shard `s` is drawn from `numpy.random.default_rng((seed, s, i))`, so the stream is
reproducible and resumable from its batch count alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIRST_ORDINARY_ID = 3  # ids 0..2 are pad / eos / unk in our vocabularies


class SyntheticHostBatches:
    """Endless random batches with the features of SeqIO's packed EncDec converter.

    Every row is one full-length segment (segment id 1, positions 0..L-1, all loss weights 1);
    decoder inputs are the targets shifted right behind `decoder_start_token_id`.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        sequence_length: dict[str, int],
        per_host_batch_size: int,
        seed: int = 0,
        shard_index: int = 0,
        num_shards: int = 1,
        decoder_start_token_id: int = 0,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        if vocab_size <= FIRST_ORDINARY_ID:
            raise ValueError(f"vocab_size must exceed {FIRST_ORDINARY_ID}, got {vocab_size}")
        missing = {"inputs", "targets"} - set(sequence_length)
        if missing:
            raise ValueError(f"sequence_length lacks {sorted(missing)}; got {sequence_length}")
        self.vocab_size = vocab_size
        self.inputs_length = int(sequence_length["inputs"])
        self.targets_length = int(sequence_length["targets"])
        self.per_host_batch_size = per_host_batch_size
        self.seed = seed
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.decoder_start_token_id = decoder_start_token_id
        self.batches_consumed = int((resume_state or {}).get("batches_consumed", 0))

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch of int32 arrays [per_host_batch_size, length]."""
        rng = np.random.default_rng((self.seed, self.shard_index, self.batches_consumed))
        self.batches_consumed += 1
        b = self.per_host_batch_size
        inputs = rng.integers(
            FIRST_ORDINARY_ID, self.vocab_size, (b, self.inputs_length), dtype=np.int32
        )
        targets = rng.integers(
            FIRST_ORDINARY_ID, self.vocab_size, (b, self.targets_length), dtype=np.int32
        )
        decoder_inputs = np.concatenate(
            [np.full((b, 1), self.decoder_start_token_id, np.int32), targets[:, :-1]], axis=1
        )
        ones = lambda n: np.ones((b, n), np.int32)
        positions = lambda n: np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy()
        return {
            "encoder_input_tokens": inputs,
            "encoder_segment_ids": ones(self.inputs_length),
            "encoder_positions": positions(self.inputs_length),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": decoder_inputs,
            "decoder_loss_weights": ones(self.targets_length),
            "decoder_segment_ids": ones(self.targets_length),
            "decoder_positions": positions(self.targets_length),
        }

    def state(self) -> dict[str, Any]:
        """`{"source": "synthetic", "batches_consumed": n, ...}` (JSON)."""
        return {
            "source": "synthetic",
            "batches_consumed": self.batches_consumed,
            "seed": self.seed,
            "shard_index": self.shard_index,
            "num_shards": self.num_shards,
            "per_host_batch_size": self.per_host_batch_size,
        }
