"""Batched generation and scoring of token-id lists, on one device or under a partitioner.

The engine pads prompts into fixed-shape batches (length rounded up to a power of two, batch
padded with copies of a real row) so that the jitted loops compile once per shape, sorts work by
length to waste little padding, and returns results in the caller's order. Padding is always
marked by segment id 0, never inferred from token ids.

With a `Partitioner` the parameters are placed by `partitioner.params_shardings(config)`, the
batches become global arrays sharded over the batch mesh axes, and every call is traced and run
inside `partitioner.activate()`, so a model too large for one device decodes on a pod slice.
Every process must pass the same prompts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from alexatm_jax.decoding import model_steps
from alexatm_jax.decoding.beam_search import beam_search
from alexatm_jax.decoding.options import DecodeOptions
from alexatm_jax.decoding.sampling import greedy_or_sample
from alexatm_jax.decoding.scoring import target_log_probs
from alexatm_jax.model import ModelConfig

Params = Any
MIN_LENGTH_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class GeneratedIds:
    """One prompt's best hypothesis: ids up to and including EOS (if emitted) and its score."""

    token_ids: list[int]
    score: float


@dataclasses.dataclass(frozen=True)
class TargetScore:
    """Teacher-forced log-probability of one target: sum and mean over its tokens, in nats."""

    score_sum: float
    score_mean: float
    num_tokens: int


def bucket_length(length: int, limit: int) -> int:
    """`length` rounded up to a power of two (at least MIN_LENGTH_BUCKET), capped at `limit`."""
    bucket = MIN_LENGTH_BUCKET
    while bucket < length:
        bucket *= 2
    return max(min(bucket, limit), length)


def pad_rows(
    rows: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """int32 tokens [len(rows), length] right-padded with `pad_id`, and segment ids (1 = real,
    0 = pad)."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    segments = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        segments[i, : len(row)] = 1
    return tokens, segments


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` cut before the earliest occurrence of any stop string (unchanged if none occurs)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class InferenceEngine:
    """Generation and scoring for one model's parameters.

    batch_size: rows per compiled call; under a partitioner it must be a multiple of the number
    of batch shards.
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Params,
        *,
        partitioner: Any = None,
        batch_size: int = 8,
        show_progress: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if partitioner is not None and batch_size % partitioner.num_batch_shards:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of the "
                f"{partitioner.num_batch_shards} batch shards of {partitioner}; pick "
                f"a multiple of {partitioner.num_batch_shards}"
            )
        self.config = config
        self.partitioner = partitioner
        self.batch_size = batch_size
        self.show_progress = show_progress
        if partitioner is not None:
            params = jax.device_put(params, partitioner.params_shardings(config))
        self.params = params

    @functools.cached_property
    def head(self) -> model_steps.OutputHead:
        """The LM head the decode loops use, built on first use and kept (not rebuilt per
        batch); with tied embeddings it is the transposed table, one extra copy of it."""
        with self._context():
            return model_steps.output_head(self.config, self.params)

    # ------------------------------------------------------------------ public API
    def generate_ids(
        self, prompts: Sequence[Sequence[int]], options: DecodeOptions, seed: int = 0
    ) -> list[GeneratedIds]:
        """The best hypothesis per prompt (prompts are id lists with their BOS/EOS), in order.

        Sampling draws from PRNG key `seed` folded with the batch number, so results depend on
        `batch_size` but are reproducible for a fixed one.
        """
        self._check_lengths(prompts, "prompt")
        if options.max_new_tokens > self.config.max_positions:
            raise ValueError(
                f"max_new_tokens={options.max_new_tokens} exceeds the model's "
                f"{self.config.max_positions} decoder positions"
            )
        results: list[GeneratedIds | None] = [None] * len(prompts)
        for number, (indices, rows) in enumerate(self._batches(prompts, "generating")):
            length = bucket_length(max(map(len, rows)), self.config.max_positions)
            tokens, segments = pad_rows(rows, length, self.config.pad_token_id)
            out_tokens, out_scores = self._run(
                self._search_fn(options, jax.random.fold_in(jax.random.key(seed), number)),
                tokens,
                segments,
            )
            if options.num_beams > 1:
                out_tokens, out_scores = out_tokens[:, 0], out_scores[:, 0]
            for row, index in enumerate(indices):
                results[index] = GeneratedIds(
                    self._until_eos(out_tokens[row]), float(out_scores[row])
                )
        return results

    def score_ids(
        self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
    ) -> list[TargetScore]:
        """Teacher-forced log-probabilities of `targets[i]` given `inputs[i]`, in order."""
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        if any(len(t) == 0 for t in targets):
            raise ValueError("every target needs at least one token")
        self._check_lengths(inputs, "input")
        self._check_lengths(targets, "target")
        pairs = [(list(i), list(t)) for i, t in zip(inputs, targets)]
        results: list[TargetScore | None] = [None] * len(pairs)
        fn = lambda params, tok, seg, tgt, mask: target_log_probs(
            params, tok, seg, tgt, mask, config=self.config
        )
        for indices, rows in self._batches(pairs, "scoring", key=lambda p: len(p[0]) + len(p[1])):
            limit = self.config.max_positions
            tokens, segments = pad_rows(
                [r[0] for r in rows],
                bucket_length(max(len(r[0]) for r in rows), limit),
                self.config.pad_token_id,
            )
            tgt, mask = pad_rows(
                [r[1] for r in rows],
                bucket_length(max(len(r[1]) for r in rows), limit),
                self.config.pad_token_id,
            )
            (log_probs,) = self._run(lambda *a: (fn(*a),), tokens, segments, tgt, mask)
            for row, index in enumerate(indices):
                n = len(rows[row][1])
                total = float(np.sum(log_probs[row, :n], dtype=np.float64))
                results[index] = TargetScore(total, total / n, n)
        return results

    # ------------------------------------------------------------------ internals
    def _search_fn(self, options: DecodeOptions, rng: jax.Array) -> Callable[..., tuple]:
        config = self.config
        if options.num_beams > 1:
            return lambda params, tok, seg: tuple(
                beam_search(params, tok, seg, config=config, options=options, head=self.head)
            )
        return lambda params, tok, seg: tuple(
            greedy_or_sample(params, tok, seg, rng, config=config, options=options, head=self.head)
        )

    def _check_lengths(self, rows: Sequence[Sequence[int]], what: str) -> None:
        limit = self.config.max_positions
        for i, row in enumerate(rows):
            if not 0 < len(row) <= limit:
                raise ValueError(
                    f"{what} {i} has {len(row)} tokens; the model accepts 1 to "
                    f"{limit} (max_positions): shorten it"
                )

    def _batches(
        self, items: Sequence[Any], desc: str, key: Callable[[Any], int] = len
    ) -> Iterator[tuple[list[int], list[Any]]]:
        """(original indices, rows padded to batch_size with copies of the first) by length."""
        order = sorted(range(len(items)), key=lambda i: key(items[i]))
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not self.show_progress):
            indices = order[start : start + self.batch_size]
            rows = [items[i] for i in indices]
            rows += [rows[0]] * (self.batch_size - len(rows))
            yield indices, rows

    def _run(self, fn: Callable[..., tuple], *arrays: np.ndarray) -> list[np.ndarray]:
        with self._context():
            if self.partitioner is not None:
                arrays = tuple(self._global(a) for a in arrays)
            outputs = fn(self.params, *arrays)
            return [self._to_host(x) for x in outputs]

    def _context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.partitioner is None else self.partitioner.activate()

    def _global(self, array: np.ndarray) -> jax.Array:
        index, count = self.partitioner.data_shard_info()
        rows = array.shape[0] // count
        return self.partitioner.shard_batch({"x": array[index * rows : (index + 1) * rows]})["x"]

    @staticmethod
    def _to_host(x: jax.Array) -> np.ndarray:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def _until_eos(self, row: np.ndarray) -> list[int]:
        ids = [int(t) for t in row]
        eos = self.config.eos_token_id
        return ids[: ids.index(eos) + 1] if eos in ids else ids
