"""Stateless index arithmetic for the prepared-data reader: keyed generators, a pseudorandom
permutation of any range, and row blocks of exact task composition.

Everything is a pure function of integers, so any host computes any row without having seen
the rows before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

_MASK64 = (1 << 64) - 1


def key_of(*parts: int | str) -> int:
    """A stable 64-bit integer from integers and strings (same on every host and run)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def generator(*key: int) -> np.random.Generator:
    """A numpy Generator seeded by a tuple of integers (through SeedSequence, whose hashing of
    the tuple is fixed across numpy versions)."""
    return np.random.default_rng([k & _MASK64 for k in key])


def _mix(value: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers with good avalanche."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def permute(index: int, size: int, key: int, rounds: int = 4) -> int:
    """The image of `index` under a keyed pseudorandom permutation of range(size).

    A balanced Feistel network over the smallest even power of two >= size, cycle-walked back
    into range (at most 4 steps expected): O(1) time and memory for any size.
    """
    if not 0 <= index < size:
        raise IndexError(f"index {index} outside range({size})")
    half_bits = max(1, ((size - 1).bit_length() + 1) // 2)
    half_mask = (1 << half_bits) - 1
    value = index
    while True:
        left, right = value >> half_bits, value & half_mask
        for round_index in range(rounds):
            left, right = right, left ^ (_mix(key ^ _mix(right + (round_index << 48))) & half_mask)
        value = (left << half_bits) | right
        if value < size:
            return value


def largest_remainder(rates: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts summing to `total`, proportional to `rates` (largest-remainder rounding;
    ties broken by name)."""
    norm = sum(rates.values())
    exact = {name: total * rate / norm for name, rate in rates.items()}
    counts = {name: int(np.floor(value)) for name, value in exact.items()}
    left = total - sum(counts.values())
    order = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in order[:left]:
        counts[name] += 1
    return counts


class RowBlocks:
    """Blocks of `block` consecutive rows with an exact composition of labels.

    Block b holds counts[label] rows of each label, in an order permuted with key (key, b). So
    the number of rows of a label before row g, and so each label's own running index, is
    known in O(block) without looking at earlier blocks.
    """

    def __init__(self, counts: Mapping[str, int], key: int) -> None:
        self.labels: Sequence[str] = sorted(name for name, n in counts.items() if n > 0)
        self.counts = np.array([counts[name] for name in self.labels], np.int64)
        self.block = int(self.counts.sum())
        self.key = key
        self._pattern = np.repeat(np.arange(len(self.labels)), self.counts)
        self._cached: tuple[int, np.ndarray, np.ndarray] = (-1, self._pattern, self._pattern)

    def _layout(self, block_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(label index per position, rank among its label's positions) of one block; the
        last block asked for is kept, as consecutive rows share it."""
        cached = self._cached  # one read: rows may be computed on several threads
        if cached[0] != block_index:
            order = generator(self.key, block_index).permutation(self._pattern)
            rank = np.empty(self.block, np.int64)
            for label in range(len(self.labels)):
                where = np.flatnonzero(order == label)
                rank[where] = np.arange(where.size)
            cached = self._cached = (block_index, order, rank)
        return cached[1], cached[2]

    def locate(self, row: int) -> tuple[str, int]:
        """(label of global row `row`, how many rows of that label come before it)."""
        block_index, position = divmod(row, self.block)
        order, rank = self._layout(block_index)
        label = int(order[position])
        return self.labels[label], int(block_index * self.counts[label] + rank[position])
