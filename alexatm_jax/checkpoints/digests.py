"""Content digests of checkpointed arrays, computed where the arrays live.

Orbax/OCDBT notices truncated and zeroed files, not flipped bytes: a flipped bit in a parameter
file restores a different value without complaint. So every checkpoint records a digest of each
array (and of its JSON side data), and every restore recomputes and compares them.

The digest of an array is two 32-bit lanes; each lane is

    sum over elements i (mod 2**32) of  fmix32(word_i XOR fmix32(i * 0x9E3779B1 + seed_lane))

where word_i is the element's bit pattern widened to uint32 (8-byte elements count as two words)
and i its row-major position (mod 2**32). fmix32 (MurmurHash3's finalizer) is a bijection, so
changing any single element always changes both lanes; several changes cancel with probability
about 2**-64. This is an integrity check against corruption, not a cryptographic hash.

A sum is associative and commutative, so the digest does not depend on how an array is sharded:
`jax.Array`s are digested on their own devices under `jit` (each device reduces its shard, XLA
adds the partial sums across devices and hosts) and only the 8-byte result reaches the host.
Nothing is gathered, whatever the array's size or layout, and a checkpoint restored into another
mesh verifies against the digests recorded when it was saved. numpy arrays (host copies, model
checkpoints written by alexatm-convert) are digested in chunks with the same function.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

ALGORITHM = "mix32x2-sum-v1"
FORMAT_VERSION = 1
_SEEDS = (0x243F6A88, 0x85A308D3)  # one per lane (digits of pi)
_INDEX_MULTIPLIER = 0x9E3779B1
_CHUNK_WORDS = 1 << 20  # 4 MiB of uint32 words per step when digesting host arrays


class DigestMismatchError(ValueError):
    """Restored data differs from what its checkpoint recorded (the message names the arrays)."""


def dotted_name(path: tuple) -> str:
    """The name of a leaf: its key path joined by dots (e.g. `opt_state.1.0.mu.encoder`)."""
    parts = []
    for key in path:
        if isinstance(key, DictKey):
            parts.append(str(key.key))
        elif isinstance(key, GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return ".".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
    """{dotted name: leaf} of a pytree, in flattening order."""
    return {dotted_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fmix32(h, xp):
    h = h ^ (h >> 16)
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _lanes(words, index, xp) -> list:
    """The two lanes' per-element terms (uint32) of `words` at positions `index`."""
    return [
        _fmix32(words ^ _fmix32(index * xp.uint32(_INDEX_MULTIPLIER) + xp.uint32(seed), xp), xp)
        for seed in _SEEDS
    ]


def _words_jax(x: jax.Array) -> jax.Array:
    """The element bit patterns of `x` as uint32 (a trailing axis of 2 for 8-byte dtypes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)


def _digest_on_device(x: jax.Array) -> jax.Array:
    words = _words_jax(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
            stride % 2**32
        )
        stride *= words.shape[axis]
    return jnp.stack([jnp.sum(lane, dtype=jnp.uint32) for lane in _lanes(words, index, jnp)])


def _device_digests(arrays: list[jax.Array]) -> list[jax.Array]:
    """uint32[2] digests of jax.Arrays, computed by one jitted program (one collective
    rendezvous per call, whatever the number of arrays), replicated wherever the arrays live
    (not yet fetched)."""
    if not arrays:
        return []
    meshes = {a.sharding.mesh for a in arrays if isinstance(a.sharding, NamedSharding)}
    if len(meshes) == 1 and all(isinstance(a.sharding, NamedSharding) for a in arrays):
        replicated = NamedSharding(meshes.pop(), PartitionSpec())
        return _jitted_digests(tuple([replicated] * len(arrays)))(arrays)
    return _jitted_digests(None)(arrays)


@functools.cache
def _jitted_digests(out_shardings: tuple | None) -> Any:
    def digest_all(arrays: list[jax.Array]) -> list[jax.Array]:
        return [_digest_on_device(a) for a in arrays]

    if out_shardings is None:
        return jax.jit(digest_all)
    return jax.jit(digest_all, out_shardings=list(out_shardings))


def _words_numpy(x: np.ndarray) -> np.ndarray:
    """The element bit patterns of a host array, flat (uint32 view, or uint8/uint16 for smaller
    dtypes, widened chunk by chunk)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return x.reshape(-1).view(np.uint8)
    size = x.dtype.itemsize
    if size >= 4:
        return x.reshape(-1).view(np.uint32)
    return x.reshape(-1).view({1: np.uint8, 2: np.uint16}[size])


@jax.jit
def _digest_chunk(words: jax.Array, offset: jax.Array, count: jax.Array) -> jax.Array:
    """Lane sums over the first `count` of `words` (uint32), at positions offset, offset+1, ..."""
    iota = jax.lax.iota(jnp.uint32, words.shape[0])
    valid = iota < count
    return jnp.stack(
        [
            jnp.sum(jnp.where(valid, lane, jnp.uint32(0)), dtype=jnp.uint32)
            for lane in _lanes(words, offset + iota, jnp)
        ]
    )


def _host_digest(x: np.ndarray) -> np.ndarray:
    """uint32[2] digest of a host array, streamed through XLA on the CPU in fixed-size chunks
    (one compilation, bounded memory, no copy of the whole array)."""
    words = _words_numpy(np.asarray(x))
    cpu = jax.local_devices(backend="cpu")[0]
    # Chunks of a power-of-two length: at most ~20 compilations, however many shapes there are.
    width = min(_CHUNK_WORDS, 1 << max(words.size - 1, 0).bit_length())
    totals = np.zeros(2, np.uint64)
    for start in range(0, words.size, width):
        chunk = words[start : start + width].astype(np.uint32)
        count = chunk.size
        if count < width:
            chunk = np.pad(chunk, (0, width - count))
        lanes = _digest_chunk(
            jax.device_put(chunk, cpu), np.uint32(start % 2**32), np.uint32(count)
        )
        totals = (totals + np.asarray(lanes, np.uint64)) % 2**32
    return totals.astype(np.uint32)


def _hex(lanes: Any) -> str:
    values = np.asarray(lanes, np.uint32).reshape(2)
    return f"{int(values[0]):08x}{int(values[1]):08x}"


def _fetch(value: jax.Array) -> np.ndarray:
    """The host copy of a replicated result (this process's first shard of it)."""
    return np.asarray(value.addressable_data(0))


def array_record(leaf: Any, digest: str) -> dict[str, Any]:
    """The JSON record of one array: shape, dtype and digest."""
    return {"shape": list(np.shape(leaf)), "dtype": np.dtype(leaf.dtype).name, "digest": digest}


def tree_digests(tree: Any) -> dict[str, dict[str, Any]]:
    """{dotted name: {"shape", "dtype", "digest"}} for every array leaf of `tree`.

    jax.Array leaves are digested on their devices by one jitted program (compiled once per tree
    of shapes and shardings); numpy leaves on the host. In a multi-process job every process must
    call this together for the global arrays (each reduction spans the hosts), and every process
    gets the same result.
    """
    leaves = named_leaves(tree)
    on_devices = [name for name, leaf in leaves.items() if isinstance(leaf, jax.Array)]
    pending = dict(zip(on_devices, _device_digests([leaves[name] for name in on_devices])))
    records = {}
    for name, leaf in leaves.items():
        lanes = _fetch(pending[name]) if name in pending else _host_digest(leaf)
        records[name] = array_record(leaf, _hex(lanes))
    return records


def json_digest(value: Any) -> str:
    """sha256 (hex) of `value` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def manifest(arrays: Mapping[str, Mapping[str, Any]], **json_items: Any) -> dict[str, Any]:
    """The digest file's contents: the array records plus a digest of each JSON side item."""
    return {
        "format_version": FORMAT_VERSION,
        "algorithm": ALGORITHM,
        "arrays": dict(arrays),
        "json": {name: json_digest(value) for name, value in json_items.items()},
    }


def check_manifest(recorded: Any, where: str) -> None:
    """Raise DigestMismatchError when `recorded` is not a digest manifest this code can check."""
    if (
        not isinstance(recorded, dict)
        or recorded.get("algorithm") != ALGORITHM
        or not isinstance(recorded.get("arrays"), dict)
    ):
        raise DigestMismatchError(
            f"{where}: the digest record is damaged or of an unknown kind "
            f"(algorithm {str(recorded.get('algorithm'))[:40]!r})"
            if isinstance(recorded, dict)
            else f"{where}: the digest record is damaged"
        )


def compare(
    actual: Mapping[str, Mapping[str, Any]],
    recorded: Mapping[str, Any],
    where: str,
    *,
    partial: bool = False,
    **json_items: Any,
) -> None:
    """Raise DigestMismatchError naming every array (and JSON item) that differs from the record.

    `actual` comes from `tree_digests`; `recorded` is a `manifest`. With `partial`, arrays of the
    record missing from `actual` are fine (a restore of the parameters only).
    """
    check_manifest(recorded, where)
    arrays = recorded["arrays"]
    problems = []
    for name, record in actual.items():
        stored = arrays.get(name)
        if stored is None:
            problems.append(f"{name}: not in the digest record")
        elif stored != record:
            changed = [
                key for key in ("shape", "dtype", "digest") if stored.get(key) != record.get(key)
            ]
            problems.append(
                f"{name}: {' and '.join(changed)} "
                f"{'differs' if len(changed) == 1 else 'differ'}"
                + (
                    f" (recorded {stored.get('digest')}, read {record['digest']})"
                    if "digest" in changed
                    else ""
                )
            )
    if not partial:
        problems += [f"{name}: recorded but not restored" for name in arrays if name not in actual]
    for name, value in json_items.items():
        if recorded.get("json", {}).get(name) != json_digest(value):
            problems.append(f"{name} (JSON): digest differs")
    if problems:
        raise DigestMismatchError(
            f"{where}: content does not match its recorded digests: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
