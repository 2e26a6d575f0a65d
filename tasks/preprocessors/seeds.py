"""Per-example stateless RNG seeds.

Sources attach `rng` = [seed, shard index] (int64 [2]) to every document; seeded preprocessors
number their elements with `enumerate` and derive the example's seed from (rng, task salt,
element index). Randomness is therefore a pure function of the user seed, the task, the shard
and the position in that shard's stream: reproducible, and independent across tasks and shards.
"""

from __future__ import annotations

import hashlib
import random

import tensorflow as tf


def source_rng(seed: int | None, shard_index: int) -> tf.Tensor:
    """The `rng` feature of a source: int64 [seed, shard]; a random seed when `seed` is None."""
    seed = random.getrandbits(62) if seed is None else int(seed)
    return tf.constant([seed, shard_index], tf.int64)


def task_salt(name: str) -> int:
    """A stable 31-bit integer derived from a task name (same on every host and run)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def example_seed(rng: tf.Tensor, salt: int, index: tf.Tensor) -> tf.Tensor:
    """A [2] stateless seed for the element number `index` of a task's stream."""
    seed = tf.random.experimental.stateless_fold_in(tf.cast(rng, tf.int64), salt)
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(index, tf.int64))
