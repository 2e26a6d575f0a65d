"""`attention_impl='splash'`: the Pallas TPU splash-attention kernels that jax ships
(`jax.experimental.pallas.ops.tpu.splash_attention`), with segment ids for packed batches.

The kernels never build the [q_len, kv_len] score matrix in HBM: they tile q and kv into blocks,
keep running softmax statistics, skip the blocks a static mask (causal) rules out, and recompute
scores in their own backward kernels. On TPU they are compiled by Mosaic; on any other backend
they run in the Pallas interpreter (correct, slow: for tests).

Masking. `SegmentMask` carries what the kernel needs instead of a boolean mask: query and key
segment ids and whether the attention is causal. It reproduces `masks.py` exactly: a query may
attend a key of its own segment, and never a padding key (segment 0). Padding keys get segment
-1 here, so a padding query (segment 0) matches no key at all: its row is fully masked, and the
kernel's finite mask value then averages all values uniformly, as `jnp.where(mask, s, min)`
does for the other implementations. Lengths that are not a multiple of the kernel's 128-wide
blocks are padded (queries with segment 0, keys with -1) and the padding is sliced off.

Sharding. A Pallas call is opaque to XLA's partitioner, so under a mesh the kernel runs inside
`shard_map`: batch and heads are split as the logical rules split ('activation_batch',
'activation_heads'); length and head_dim stay whole on every device.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Array = jax.Array
LANES = 128  # the kernel's block sizes must be multiples of the TPU lane width
MAX_BLOCK = 512


@flax.struct.dataclass
class SegmentMask:
    """What splash attention needs to mask one attention: [batch, len] int32 segment ids of the
    queries and the keys (None: all positions real, one segment per row) and causality."""

    q_segment_ids: Array | None
    kv_segment_ids: Array | None
    causal: bool = flax.struct.field(pytree_node=False, default=False)


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _block(length: int) -> int:
    """The largest block size <= MAX_BLOCK, a multiple of LANES, dividing `length`."""
    return max(b for b in range(LANES, min(length, MAX_BLOCK) + 1, LANES) if length % b == 0)


def _kernel(heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool):
    """A splash MHA kernel for [heads, q_len, head_dim] x [heads, kv_len, head_dim] operands.
    Built anew in every trace: its mask tables become constants of that trace (a kernel cached
    across traces would leak them)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    shape = (q_len, kv_len)
    head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
    bq, bkv = _block(q_len), _block(kv_len)
    # One fused backward kernel computes dq, dk and dv from a single pass over the blocks.
    sizes = splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        use_fused_bwd_kernel=True,
    )
    return splash.make_splash_mha(
        splash.MultiHeadMask([head_mask] * heads),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _target_platform() -> str:
    """The platform the traced computation is for: the active mesh's, else the default."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def _axes_size(mesh: jax.sharding.AbstractMesh, axes: str | tuple[str, ...] | None) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[name] for name in names)


def _segment_operands(
    mask: SegmentMask, batch: int, q_len: int, kv_len: int, q_pad: int, kv_pad: int
) -> tuple[Array, Array] | None:
    """[batch, padded len] int32 query / key segment ids as the kernel matches them (equal ids
    attend), or None when nothing needs masking beyond the static mask."""
    if mask.q_segment_ids is None and mask.kv_segment_ids is None and not (q_pad or kv_pad):
        return None
    if mask.kv_segment_ids is None:
        kv = jnp.ones((batch, kv_len), jnp.int32)
    else:
        kv = jnp.where(mask.kv_segment_ids == 0, -1, mask.kv_segment_ids).astype(jnp.int32)
    if mask.q_segment_ids is None:
        q = jnp.ones((batch, q_len), jnp.int32)
        kv = jnp.where(kv == -1, -1, 1)  # no query segments: every real key is attendable
    else:
        q = mask.q_segment_ids.astype(jnp.int32)
    return (
        jnp.pad(q, ((0, 0), (0, q_pad)), constant_values=0),
        jnp.pad(kv, ((0, 0), (0, kv_pad)), constant_values=-1),
    )


def splash_attention(
    query: Array, key: Array, value: Array, mask: SegmentMask, scale: float
) -> Array:
    """softmax(q k^T * scale, masked) v for [batch, len, heads, head_dim] operands, by the
    splash kernels; returns [batch, q_len, heads, head_dim] in the query's dtype."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    q_pad, kv_pad = _round_up(q_len, LANES) - q_len, _round_up(kv_len, LANES) - kv_len
    segments = _segment_operands(mask, batch, q_len, kv_len, q_pad, kv_pad)
    head_major = lambda x, pad: jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))
    q = head_major(query * jnp.asarray(scale, query.dtype), q_pad)
    k, v = head_major(key, kv_pad), head_major(value, kv_pad)
    interpret = _target_platform() != "tpu"

    def attend(q: Array, k: Array, v: Array, *segment_arrays: Array) -> Array:
        kernel = _kernel(q.shape[1], q.shape[2], k.shape[2], mask.causal, interpret)
        if not segment_arrays:
            return jax.vmap(kernel)(q, k, v)
        ids = SegmentIds(q=segment_arrays[0], kv=segment_arrays[1])
        return jax.vmap(kernel)(q, k, v, segment_ids=ids)

    operands = (q, k, v) + (segments or ())
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        batch_axes, head_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
        if heads % _axes_size(mesh, head_axes):
            head_axes = None  # heads that do not split evenly stay whole on every device
        heads_spec = PartitionSpec(batch_axes, head_axes, None, None)
        ids_spec = PartitionSpec(batch_axes, None)
        specs = (heads_spec,) * 3 + (ids_spec,) * len(segments or ())
        attend = jax.shard_map(attend, in_specs=specs, out_specs=heads_spec, check_vma=False)
    out = attend(*operands)
    return jnp.swapaxes(out[:, :, :q_len], 1, 2)


def splash_kernel_flops(config, batch: int, inputs_length: int, targets_length: int) -> float:
    """Matmul FLOPs of one train step's splash kernels (q.k and p.v products), all devices.

    Per attention of Lq x Lkv positions: the forward kernel 4·Lq·Lkv·d_model; the fused
    backward kernel 10·Lq·Lkv·d_model (q.k and dO.v again, then dv, dq, dk); with any remat
    policy the forward again. Causal attention skips the kernel blocks above the diagonal.
    The TPU cost model does not cost Pallas kernels, so the planner adds these.
    """

    def units(q_len: int, kv_len: int, causal: bool) -> float:
        blocks = _round_up(q_len, LANES) // _block(_round_up(q_len, LANES))
        share = (blocks + 1) / (2 * blocks) if causal else 1.0
        return q_len * kv_len * share

    per_unit = 4 + 10 + (4 if config.remat_policy != "none" else 0)
    per_sequence = config.num_encoder_layers * units(
        inputs_length, inputs_length, False
    ) + config.num_decoder_layers * (
        units(targets_length, targets_length, True) + units(targets_length, inputs_length, False)
    )
    return float(per_unit * per_sequence * config.d_model * batch)
