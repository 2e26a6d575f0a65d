"""Dropout whose masks cost a quarter of the random bits of `flax.linen.Dropout`'s.

`ModelConfig.dropout_rng_impl` picks how a mask is drawn from the module's `dropout` key:

* "threefry_packed" (default): one Threefry-2x32 hash per four elements, each element keeping
  16 of its 64 bits (keep iff the 16-bit draw >= round(rate * 65536), so rate 0.1 is applied as
  0.100006). With `jax_threefry_partitionable` (JAX's default) `jax.random.bernoulli` hashes
  once per element and xors the hash's two words away into one 32-bit draw; this draws 4x fewer
  hashes (timed in docs/benchmarks.md#measurements-behind-code-choices), and the hash is the same
  counter-based Threefry: a pure function of (key, element index), identical on every backend
  and under every sharding, so exact resume and the 1-vs-8-device equivalence hold.
* "threefry2x32", "rbg", "unsafe_rbg": `jax.random.bernoulli` (what `nn.Dropout` does) with a
  key of that implementation derived from the dropout key; rbg/unsafe_rbg use XLA's
  RngBitGenerator, the T5X/MaxText choice on TPU (no faster than threefry on CPU).

(`philox4x32`, faster still on one CPU device, does not compile under SPMD sharding in
jax 0.10: its `mulhi` has no StableHLO form.)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

PACKED = "threefry_packed"
DRAW_BITS = 16
# (block, blocks): the model runs on rows [block * n, (block + 1) * n) of a batch of blocks * n.
_BATCH_BLOCK: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar(
    "alexatm_dropout_batch_block", default=(0, 1)
)


@contextlib.contextmanager
def batch_block(block: int, blocks: int) -> Iterator[None]:
    """While tracing inside this context, every dropout mask is the one the whole batch would
    get, restricted to the rows of block `block` of `blocks` equal contiguous blocks of the
    batch (axis 0): a model applied block by block (the train step's parallel branches) draws
    exactly the masks of one application to the whole batch."""
    if not 0 <= block < blocks:
        raise ValueError(f"need 0 <= block < blocks, got {block}, {blocks}")
    token = _BATCH_BLOCK.set((block, blocks))
    try:
        yield
    finally:
        _BATCH_BLOCK.reset(token)


@functools.cache
def _key_data_shape(impl: str) -> tuple[int, ...]:
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape


def key_as(key: jax.Array, impl: str) -> jax.Array:
    """A typed key of PRNG implementation `impl` derived from `key` (a pure function of it);
    `key` itself when it already is of that implementation."""
    if str(jax.random.key_impl(key)) == impl:
        return key
    data = jax.random.bits(key, _key_data_shape(impl), jnp.uint32)
    return jax.random.wrap_key_data(data, impl=impl)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major index of every element of an array of `shape`."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return index


def packed_keep_mask(
    key: jax.Array, shape: tuple[int, ...], rate: float, row_offset: int = 0
) -> jax.Array:
    """Boolean keep-mask of `shape` (P(keep) = 1 - round(rate * 2^16) / 2^16) from one
    Threefry-2x32 hash per four elements of the last axis. `row_offset` shifts the row counter
    (the flat index over the leading axes): rows [o, o + r) of a larger mask."""
    if not shape:
        return packed_keep_mask(key, (1,), rate)[0]
    key = key_as(key, "threefry2x32")
    k1, k2 = jax.random.key_data(key)
    *lead, last = shape
    words = -(-last // 4)
    word_shape = (*lead, words)
    # Counter = (index over the leading axes, word index along the last axis): unique per word
    # for any array with fewer than 2^32 rows and 2^32 words per row.
    rows = _flat_index(tuple(lead)) if lead else jnp.zeros((), jnp.uint32)
    rows = rows + jnp.uint32(row_offset)
    counts_hi = jnp.broadcast_to(rows[..., None], word_shape)
    counts_lo = jax.lax.broadcasted_iota(jnp.uint32, word_shape, len(word_shape) - 1)
    hi, lo = threefry2x32_p.bind(k1, k2, counts_hi, counts_lo)
    low_bits = jnp.uint32((1 << DRAW_BITS) - 1)
    draws = jnp.stack([hi & low_bits, hi >> DRAW_BITS, lo & low_bits, lo >> DRAW_BITS], axis=-1)
    draws = draws.reshape(*lead, words * 4)[..., :last]
    return draws >= jnp.uint32(round(rate * (1 << DRAW_BITS)))


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float, impl: str) -> jax.Array:
    """Boolean keep-mask of `shape` for dropout `rate`, drawn as `impl` says (module doc), for
    the current `batch_block`."""
    block, blocks = _BATCH_BLOCK.get()
    if impl == PACKED and (blocks == 1 or len(shape) >= 2):
        # Rows of the whole batch's mask directly: batch is the outermost leading axis.
        offset = block * math.prod(shape[:-1]) if blocks > 1 else 0
        return packed_keep_mask(key, shape, rate, row_offset=offset)

    def draw(full_shape: tuple[int, ...]) -> jax.Array:
        if impl == PACKED:
            return packed_keep_mask(key, full_shape, rate)
        return jax.random.bernoulli(key_as(key, impl), 1.0 - rate, full_shape)

    if blocks == 1:
        return draw(shape)
    # The whole batch's mask, sliced (XLA merges the identical draws of all blocks into one).
    rows = shape[0]
    full = draw((rows * blocks, *shape[1:]))
    return jax.lax.slice_in_dim(full, block * rows, (block + 1) * rows, axis=0)


class Dropout(nn.Module):
    """Inverted dropout (kept values scaled by 1 / (1 - rate)), drawing its mask from the
    `dropout` RNG stream with `keep_mask(..., impl)`. A drop-in for `nn.Dropout(rate)`."""

    rate: float
    impl: str = PACKED

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool) -> jax.Array:
        if self.rate == 0.0 or deterministic:
            return inputs
        keep = keep_mask(self.make_rng("dropout"), inputs.shape, self.rate, self.impl)
        return jax.lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))
