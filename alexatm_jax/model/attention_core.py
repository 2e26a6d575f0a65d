"""The einsum attention core, softmax(q.k * scale + mask) . v, with a hand-written backward pass
and, on CPU, independent head groups.

* Backward: the softmax gradient needs, per query, sum_k(dP * P) over the keys. That equals
  sum_d(dO * O) over the head dimension (FlashAttention's `D`), which reads [batch, q, heads,
  head_dim] instead of [batch, heads, q, kv]: 4x less at 256 keys and 64 dimensions per head. The
  gradients are otherwise the ones autodiff forms, masked positions included (zero).
* Head groups (`ModelConfig.split_attention_heads`): the heads are cut into one group per CPU
  core, each an independent product chain. XLA:CPU runs a batched product on one core, and its
  executor runs independent products side by side; a TPU or GPU gains nothing from it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alexatm_jax.host import cores_dividing

Array = jax.Array
_F32 = jnp.float32


def attention_probabilities(
    q: Array, k: Array, mask: Array | None, scale: float, equation: str = "bqhd,bkhd->bhqk"
) -> Array:
    """Softmax((q k^T) * scale + mask) in float32, shape [batch, heads, q_len, kv_len].

    `equation` names the key layout (head-major decode caches use "bqhd,bhkd->bhqk").
    """
    scores = jnp.einsum(equation, q, k, preferred_element_type=_F32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(_F32).min)
    return jax.nn.softmax(scores, axis=-1)


def head_groups(num_heads: int, split: bool) -> int:
    """Groups to cut `num_heads` into: the largest divisor of it up to the available cores when
    `split`, else 1."""
    return cores_dividing(num_heads) if split else 1


def attention(
    q: Array, k: Array, v: Array, mask: Array | None, scale: float, groups: int = 1
) -> Array:
    """Attention output [batch, q_len, heads, head_dim] of q [batch, q_len, heads, head_dim],
    k and v [batch, kv_len, heads, head_dim] and a boolean mask broadcastable to [batch, heads,
    q_len, kv_len] (None: attend everywhere), in `groups` independent head groups."""
    if mask is None:
        mask = jnp.ones((1, 1, 1, 1), bool)
    if groups == 1:
        return _core(q, k, v, mask, scale)
    cut = lambda x: jnp.split(x, groups, axis=2)
    outs = [_core(*qkv, mask, scale) for qkv in zip(cut(q), cut(k), cut(v))]
    return jnp.concatenate(outs, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _core(q: Array, k: Array, v: Array, mask: Array, scale: float) -> Array:
    return _core_fwd(q, k, v, mask, scale)[0]


def _core_fwd(q, k, v, mask, scale):
    probs = attention_probabilities(q, k, mask, scale)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(q.dtype), v)
    return out, (q, k, v, mask, probs, out)


def _core_bwd(scale, residuals, d_out):
    q, k, v, mask, probs, out = residuals
    d_v = jnp.einsum("bhqk,bqhd->bkhd", probs.astype(v.dtype), d_out)
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, v, preferred_element_type=_F32)
    row_dot = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(_F32), out.astype(_F32))
    d_scores = jnp.where(mask, probs * (d_probs - row_dot[..., None]) * scale, 0.0)
    d_scores = d_scores.astype(q.dtype)
    d_q = jnp.einsum("bhqk,bkhd->bqhd", d_scores, k)
    d_k = jnp.einsum("bhqk,bqhd->bkhd", d_scores, q)
    return d_q, d_k, d_v, None


_core.defvjp(_core_fwd, _core_bwd)
