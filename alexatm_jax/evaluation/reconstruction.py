"""How well a denoising reconstruction restores its original, against copying the noisy input.

The denoising objective deletes spans of the original; the noisy input is the rest, in order.
A reconstruction is aligned with the original as a common subsequence (tokens in order, each
used once). Of all alignments with the most matched tokens, the one that matches as many
*kept* (undeleted) tokens as possible is taken, so that a deleted token counts as restored only
when no kept token could have taken its match: the restored share of deleted tokens is never
flattered by a repeated word. Copying the noisy input matches every kept token and restores no
deleted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class ReconstructionScore:
    """Token counts of one or more reconstructions (EOS not counted)."""

    target_tokens: int = 0
    deleted_tokens: int = 0
    matched: int = 0
    matched_deleted: int = 0

    def __add__(self, other: ReconstructionScore) -> ReconstructionScore:
        return ReconstructionScore(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @property
    def accuracy(self) -> float:
        """Share of the original's tokens restored in order (0..1)."""
        return self.matched / max(self.target_tokens, 1)

    @property
    def deleted_recall(self) -> float:
        """Share of the deleted tokens restored at their place (0..1)."""
        return self.matched_deleted / max(self.deleted_tokens, 1)


def _before_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def score_reconstruction(
    predicted: Sequence[int], target: Sequence[int], deleted: Sequence[int], eos_id: int
) -> ReconstructionScore:
    """Score one reconstruction. `target` is the original's ids, `deleted` a 0/1 flag per target
    id (1 = deleted from the noisy input; the denoising task's `noise_mask`); EOS and anything
    after it are dropped from `predicted` and `target`."""
    target_body = _before_eos(target, eos_id)
    flags = [int(f) for f in deleted[: len(target_body)]]
    if len(flags) != len(target_body):
        raise ValueError(f"{len(flags)} deletion flags for {len(target_body)} target tokens")
    predicted_body = _before_eos(predicted, eos_id)
    # best[i][j] = (matches, kept matches) of predicted[:i] against target[:j], compared as a
    # pair: most matches first, then most kept ones.
    width = len(target_body) + 1
    previous = [(0, 0)] * width
    for token in predicted_body:
        current = [(0, 0)]
        for j, (wanted, flag) in enumerate(zip(target_body, flags)):
            best = max(previous[j + 1], current[j])
            if token == wanted:
                diagonal = (previous[j][0] + 1, previous[j][1] + (1 - flag))
                best = max(best, diagonal)
            current.append(best)
        previous = current
    matched, matched_kept = previous[-1]
    return ReconstructionScore(
        target_tokens=len(target_body),
        deleted_tokens=sum(flags),
        matched=matched,
        matched_deleted=matched - matched_kept,
    )
