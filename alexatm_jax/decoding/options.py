"""What to decode: search strategy, lengths, sampling filters, banned words, length penalty.

`DecodeOptions` is what callers fill in. The jitted loops split it in two so that requests which
differ only in values share one compiled loop:

* static (part of the compilation key): max_new_tokens, num_beams, sample, and the padded shape
  of the bad-word table;
* traced (`SearchKnobs`, plain arrays): temperature, top_k, top_p, length penalty and its kind,
  and the bad-word ids themselves.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LENGTH_PENALTY_KINDS = ("power", "gnmt")
# In a bad-word prefix table, slots left of a shorter prefix match anything.
WILDCARD = -2
# A table row with this last id bans nothing (padding rows of the table).
NO_TOKEN = -1


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Decoding settings.

    max_new_tokens: decoder steps after the forced start token (EOS included when emitted).
    num_beams: 1 = greedy or sampling; > 1 = beam search (incompatible with `sample`).
    length_penalty / length_penalty_kind: beam scores are sum(log p) / norm(length) with
        `power`: norm = length ** alpha (HF-style) or `gnmt`: norm = ((5 + length) / 6) ** alpha
        (Wu et al. 2016); `length` counts generated tokens including the EOS. alpha = 0 ranks
        hypotheses by their total log-probability.
    sample: draw each token from the filtered distribution instead of taking the argmax.
    temperature, top_k (0 = off), top_p (1.0 = off): filters applied before sampling, in that order.
    bad_words: token-id sequences that must never be produced. A one-token sequence bans that id
        at every step; a longer one bans its last id whenever the preceding tokens (the decoder
        start token included) end with the rest of the sequence.
    """

    max_new_tokens: int = 64
    num_beams: int = 1
    length_penalty: float = 1.0
    length_penalty_kind: str = "power"
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    bad_words: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            problems.append(f"num_beams must be >= 1, got {self.num_beams}")
        if self.sample and self.num_beams > 1:
            problems.append("sampling with num_beams > 1 is not supported: use one of them")
        if self.length_penalty_kind not in LENGTH_PENALTY_KINDS:
            problems.append(
                f"length_penalty_kind must be one of {LENGTH_PENALTY_KINDS}, "
                f"got {self.length_penalty_kind!r}"
            )
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        for word in self.bad_words:
            if not word or any(not isinstance(i, int) or i < 0 for i in word):
                problems.append(
                    f"each bad word must be a non-empty tuple of token ids, got {word!r}"
                )
        if problems:
            raise ValueError("Invalid DecodeOptions: " + "; ".join(problems))

    def replace(self, **changes) -> DecodeOptions:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class StaticSearch:
    """The shape-deciding part of DecodeOptions (a jit static argument).

    bad_word_rows / bad_word_window: the padded bad-word table shape (powers of two, >= 1).
    """

    max_new_tokens: int
    num_beams: int
    sample: bool
    bad_word_rows: int
    bad_word_window: int


class SearchKnobs(NamedTuple):
    """The value-only part of DecodeOptions, as arrays traced by the jitted loops."""

    temperature: jax.Array  # float32 scalar
    top_k: jax.Array  # int32 scalar, 0 = off
    top_p: jax.Array  # float32 scalar
    length_penalty: jax.Array  # float32 scalar alpha
    gnmt: jax.Array  # bool scalar: GNMT normaliser instead of power
    bad_prefixes: jax.Array  # int32 [rows, window], right-aligned, WILDCARD-filled
    bad_last_ids: jax.Array  # int32 [rows], NO_TOKEN on padding rows


def _power_of_two_at_least(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def split_options(options: DecodeOptions) -> tuple[StaticSearch, SearchKnobs]:
    """The static and traced halves of `options`."""
    words = options.bad_words
    window = max((len(w) for w in words), default=1) - 1
    rows, width = _power_of_two_at_least(max(len(words), 1)), _power_of_two_at_least(max(window, 1))
    prefixes = np.full((rows, width), WILDCARD, np.int32)
    last_ids = np.full((rows,), NO_TOKEN, np.int32)
    for row, word in enumerate(words):
        if len(word) > 1:
            prefixes[row, width - (len(word) - 1) :] = word[:-1]
        last_ids[row] = word[-1]
    static = StaticSearch(options.max_new_tokens, options.num_beams, options.sample, rows, width)
    knobs = SearchKnobs(
        temperature=np.float32(options.temperature),
        top_k=np.int32(options.top_k),
        top_p=np.float32(options.top_p),
        length_penalty=np.float32(options.length_penalty),
        gnmt=np.bool_(options.length_penalty_kind == "gnmt"),
        bad_prefixes=prefixes,
        bad_last_ids=last_ids,
    )
    return static, knobs


def length_normalizer(length: jax.Array, alpha: jax.Array, gnmt: jax.Array | bool) -> jax.Array:
    """The divisor of a hypothesis' summed log-probability for `length` generated tokens (float32).

    `gnmt` selects ((5 + length) / 6) ** alpha over length ** alpha.
    """
    length = jnp.asarray(length, jnp.float32)
    return jnp.where(gnmt, ((5.0 + length) / 6.0) ** alpha, length**alpha)
