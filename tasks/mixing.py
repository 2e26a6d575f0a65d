"""Mixture sampling with an exact objective share per block of examples.

Within each objective, tasks (language x source) are sampled at random in proportion to their
rates (tf.data sample_from_datasets). Across objectives the choice is stratified: every block of
`block` consecutive examples holds exactly round(block * share) examples of each objective, so the
CLM share of any 100 aligned examples is exactly 20% (not 20% ± noise). Within a block each
objective's examples are adjacent and the block is rotated by a seeded random offset: adjacent
short CLM examples let SeqIO's greedy packer share rows between them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import tensorflow as tf

SampleFn = Callable[[Sequence[tf.data.Dataset], Sequence[float], int | None], tf.data.Dataset]


def objective_of(task_name: str) -> str:
    """The objective suffix of a task name (`..._denoise` -> "denoise", `..._clm` -> "clm")."""
    return task_name.rsplit("_", 1)[-1]


def block_pattern(counts: Sequence[int], seed: int) -> tf.data.Dataset:
    """An endless int64 dataset of blocks: counts[0] zeros, counts[1] ones, ..., each block
    rotated by an offset drawn with a stateless seed from (seed, block index)."""
    pattern = tf.constant([i for i, c in enumerate(counts) for _ in range(c)], tf.int64)

    @tf.autograph.experimental.do_not_convert
    def block(index):
        offset = tf.random.stateless_uniform(
            [],
            seed=tf.stack([tf.constant(seed, tf.int64), index]),
            maxval=int(pattern.shape[0]),
            dtype=tf.int64,
        )
        return tf.roll(pattern, offset, axis=0)

    return tf.data.Dataset.range(2**62).map(block).unbatch()


def stratified_sampler(task_names: Sequence[str], block: int = 100) -> SampleFn:
    """A seqio Mixture `sample_fn` for tasks named `<...>_<objective>`.

    `task_names` must be the mixture's tasks in the order seqio passes their datasets (sorted by
    name). Objective shares are the sums of their tasks' rates, rounded to 1/`block`.
    """
    names = sorted(task_names)
    objectives = sorted({objective_of(name) for name in names})

    def sample(datasets, rates, seed):
        if len(datasets) != len(names):
            raise ValueError(
                f"the mixture passed {len(datasets)} datasets for {len(names)} tasks; a task "
                "probably lacks the requested split"
            )
        seed = random.getrandbits(62) if seed is None else int(seed)
        members, shares = [], []
        for k, objective in enumerate(objectives):
            index = [i for i, name in enumerate(names) if objective_of(name) == objective]
            weights = [float(rates[i]) for i in index]
            shares.append(sum(weights))
            if len(index) == 1:
                members.append(datasets[index[0]])
            else:
                members.append(
                    tf.data.Dataset.sample_from_datasets(
                        [datasets[i] for i in index],
                        weights=[w / sum(weights) for w in weights],
                        seed=seed + 1 + k,
                        stop_on_empty_dataset=False,
                    )
                )
        counts = [round(block * share / sum(shares)) for share in shares[:-1]]
        counts.append(block - sum(counts))
        choice = block_pattern(counts, seed)
        return tf.data.Dataset.choose_from_datasets(members, choice, stop_on_empty_dataset=False)

    return sample
