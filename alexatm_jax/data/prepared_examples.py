"""The pretraining objectives and packing on numpy arrays, for the prepared-data reader.

The same rules as the SeqIO tasks (tasks/preprocessors/denoising.py, clm.py, release_template.py
and SeqIO's packed `EncDecFeatureConverter`; docs/data.md#the-objectives-exactly), drawn from a
`numpy.random.Generator` instead of TensorFlow's stateless ops: the same distributions, not the
same draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Zero draws of a Poisson are discarded; 2k + 8 draws hold k non-zero ones except with
# astronomically small probability (then fewer than k tokens are deleted, never more).
_EXTRA_DRAWS = 8


@dataclasses.dataclass(frozen=True)
class Objectives:
    """What the objectives need besides the tokens: special ids and the noise settings.

    `bos`/`space` are set for a vocabulary with the release's template (`<s>` before inputs and
    targets, `<s> ▁` before CLM inputs), else None.
    """

    eos: int
    clm: int
    bos: int | None = None
    space: int | None = None
    noise_rate: float = 0.15
    poisson_lambda: float = 3.0
    clm_split_low: float = 0.2
    clm_split_high: float = 0.8

    def overhead(self, objective: str) -> dict[str, int]:
        """Tokens the release template adds to (inputs, targets) of `objective` (0 without it)."""
        if self.bos is None:
            return {"inputs": 0, "targets": 0}
        return {"inputs": 2 if objective == "clm" else 1, "targets": 1}

    def marker(self, objective: str) -> list[int]:
        """The template's tokens before inputs ([] without the template)."""
        if self.bos is None:
            return []
        return [self.bos, self.space] if objective == "clm" else [self.bos]


def deletion_mask(
    num_tokens: int, rng: np.random.Generator, rate: float, poisson_lambda: float
) -> np.ndarray:
    """bool [num_tokens]: the body tokens to delete (rate against num_tokens + 1, EOS kept)."""
    k = int(np.floor(rate * (num_tokens + 1) + rng.random()))
    k = min(max(k, 0), max(num_tokens - 1, 0))
    draws = rng.poisson(poisson_lambda, 2 * k + _EXTRA_DRAWS)
    draws = draws[draws > 0]
    before = np.cumsum(draws) - draws
    lengths = np.minimum(draws, np.maximum(k - before, 0))
    lengths = lengths[lengths > 0]
    kept = num_tokens - int(lengths.sum())
    lengths = lengths[: min(lengths.size, kept + 1)]  # each span in its own gap between kept tokens
    gaps = np.sort(rng.permutation(kept + 1)[: lengths.size])
    starts = gaps + np.cumsum(lengths) - lengths
    delta = np.zeros(num_tokens + 1, np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + lengths, -1)
    return np.cumsum(delta)[:num_tokens] > 0


def denoising_example(
    body: np.ndarray, rng: np.random.Generator, objectives: Objectives
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, noise mask): targets = body + EOS, inputs = body without the deleted
    spans + EOS, with the release template's `<s>` before both where the vocabulary has one;
    the mask is int32 per target token, 1 where deleted."""
    mask = deletion_mask(body.size, rng, objectives.noise_rate, objectives.poisson_lambda)
    marker = objectives.marker("denoise")
    inputs = np.concatenate([marker, body[~mask], [objectives.eos]])
    targets = np.concatenate([marker, body, [objectives.eos]])
    noise = np.concatenate([np.zeros(len(marker)), mask, [0]])
    return inputs.astype(np.int32), targets.astype(np.int32), noise.astype(np.int32)


def clm_example(
    document: np.ndarray,
    rng: np.random.Generator,
    objectives: Objectives,
    lengths: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, targets, split point s) of one document of m >= 2 tokens split at s = round(u m),
    u ~ U(low, high), clipped to [1, m - 1]: inputs = [CLM] + the last L_in - 2 tokens before s +
    EOS, targets = the next L_t - 1 tokens + EOS (template tokens reserved in L_in, L_t)."""
    m = document.size
    u = rng.uniform(objectives.clm_split_low, objectives.clm_split_high)
    s = min(max(int(np.round(u * m)), 1), m - 1)
    overhead = objectives.overhead("clm")
    max_prefix = lengths["inputs"] - overhead["inputs"] - 2
    max_continuation = lengths["targets"] - overhead["targets"] - 1
    prefix = document[max(0, s - max_prefix) : s]
    inputs = np.concatenate([objectives.marker("clm"), [objectives.clm], prefix, [objectives.eos]])
    bos = [] if objectives.bos is None else [objectives.bos]
    targets = np.concatenate([bos, document[s : s + max_continuation], [objectives.eos]])
    return inputs.astype(np.int32), targets.astype(np.int32), s


def fits(
    used: dict[str, int], example: tuple[np.ndarray, np.ndarray], lengths: dict[str, int]
) -> bool:
    """Whether `example` still fits a row that already holds `used` input/target tokens."""
    inputs, targets = example
    return (
        used["inputs"] + min(inputs.size, lengths["inputs"]) <= lengths["inputs"]
        and used["targets"] + min(targets.size, lengths["targets"]) <= lengths["targets"]
    )


def packed_row(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    lengths: dict[str, int],
    decoder_start_token_id: int,
) -> dict[str, np.ndarray]:
    """One row of SeqIO's packed EncDec features from `examples` (each cut to the lengths, in
    order, together fitting the row): int32 [L] tokens, decoder inputs, loss weights, positions
    and segment ids (segment k + 1 for example k, 0 on padding)."""
    row = {}
    for side, feature in (("inputs", "encoder"), ("targets", "decoder")):
        length = lengths[side]
        tokens = np.zeros(length, np.int32)
        segments = np.zeros(length, np.int32)
        positions = np.zeros(length, np.int32)
        cursor = 0
        for k, example in enumerate(examples):
            ids = example[0 if side == "inputs" else 1][:length]
            stop = cursor + ids.size
            if stop > length:
                raise ValueError(f"examples overflow the {side} length {length}")
            tokens[cursor:stop] = ids
            segments[cursor:stop] = k + 1
            positions[cursor:stop] = np.arange(ids.size)
            cursor = stop
        if side == "inputs":
            row["encoder_input_tokens"] = tokens
        else:
            row["decoder_target_tokens"] = tokens
            row["decoder_loss_weights"] = (tokens != 0).astype(np.int32)
            row["decoder_input_tokens"] = _autoregressive_inputs(
                tokens, segments, decoder_start_token_id
            )
        row[f"{feature}_segment_ids"] = segments
        row[f"{feature}_positions"] = positions
    return row


def _autoregressive_inputs(targets: np.ndarray, segments: np.ndarray, start: int) -> np.ndarray:
    """Targets shifted right within each segment, `start` at each segment's first position (and
    at the first padding position), as SeqIO's `make_autoregressive_inputs` with sequence ids."""
    shifted = np.concatenate([[0], targets[:-1]]).astype(np.int32)
    first = segments != np.concatenate([[0], segments[:-1]])
    return np.where(first, start, shifted).astype(np.int32)
