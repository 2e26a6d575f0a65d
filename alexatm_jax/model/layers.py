"""Building blocks of the AlexaTM transformer: LayerNorm, dense projections, attention, MLP.

Every parameter is declared with logical axis names; activations are constrained with logical
names too. Only the partitioner maps those names onto mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from alexatm_jax.model.attention_core import attention, attention_probabilities, head_groups
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.dropout import Dropout
from alexatm_jax.model.splash import SegmentMask, splash_attention

Array = jax.Array
LogicalAxes = tuple[str | None, ...]


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The release's activations: `gelu` is the exact erf form, `gelu_new` the tanh approximation."""
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


def dense_init(config: ModelConfig) -> nn.initializers.Initializer:
    """Weights ~ N(0, init_std), the release's `_init_weights`."""
    return nn.initializers.normal(stddev=config.init_std)


@jax.custom_vjp
def _materialize_cotangent(x: Array) -> Array:
    return x


def _materialize_cotangent_fwd(x: Array) -> tuple[Array, None]:
    return x, None


def _materialize_cotangent_bwd(_, cotangent: Array) -> tuple[Array]:
    # XLA:CPU removes optimization barriers before fusion, but never fuses across a conditional
    # whose predicate it cannot fold. The predicate is false only when the cotangent's first
    # element is NaN; the gradient is then non-finite anyway and comes out all NaN.
    first = cotangent.reshape(-1)[0]
    return (
        jax.lax.cond(first == first, lambda g: g, lambda g: jnp.full_like(g, jnp.nan), cotangent),
    )


_materialize_cotangent.defvjp(_materialize_cotangent_fwd, _materialize_cotangent_bwd)


def cotangent_barrier(x: Array, config: ModelConfig) -> Array:
    """Identity whose backward pass materialises the incoming cotangent (a fusion barrier).

    Placed on the residual stream before every sublayer. Without it XLA:CPU fuses the whole
    backward residual-gradient chain (LayerNorm backward, dropout masks, residual adds) of all
    later layers into the transposing copy that feeds each weight-gradient matmul, so layer i
    recomputes the chain of layers i+1..N: quadratic work (measured in
    docs/benchmarks.md#measurements-behind-code-choices). `config.cotangent_barriers`: "auto"
    (CPU only), "on", "off". GPU and TPU fusion heuristics do not duplicate the chain, so "auto"
    leaves them alone.
    """
    if not cpu_only_option(config.cotangent_barriers):
        return x
    return _materialize_cotangent(x)


def cpu_only_option(mode: str) -> bool:
    """Whether a CPU-only program shape ("auto", "on", "off") applies: "auto" means when JAX
    runs on CPU. A plan for TPU or GPU devices made on a CPU host resolves "auto" to "off"
    first (`planning.planned_model_config`)."""
    return mode == "on" or (mode == "auto" and jax.default_backend() == "cpu")


def constrain(x: Array, axes: LogicalAxes) -> Array:
    """Attach logical axis names to an activation (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, axes)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed in float32.

    With `uncentered=True` (the release's quirk) the normaliser is the uncentered second moment:
    (x - mean) * rsqrt(mean(x**2) + eps) * scale + bias.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (features,),
            jnp.dtype(cfg.param_dtype),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (features,),
            jnp.dtype(cfg.param_dtype),
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        if cfg.uncentered_layer_norm:
            second_moment = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        else:
            second_moment = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(second_moment + cfg.layer_norm_eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(jnp.dtype(cfg.dtype))


def matrix_product(x: Array, kernel: Array, num_in_axes: int, dtype: jnp.dtype) -> Array:
    """x . kernel, contracting x's trailing `num_in_axes` axes with the kernel's leading ones,
    as one 2-D product [rows, in] . [in, out] reshaped back: [*x.shape[:-num_in_axes],
    *kernel.shape[num_in_axes:]] in `dtype`.

    In this form the weight gradient is the 2-D product [rows, in]^T . [rows, out], which
    XLA:CPU runs with the transposition folded into the matmul. Contracting the batch and
    length axes of the 3-D (4-D) operands instead made it copy a transposed activation or
    cotangent before every weight-gradient matmul, and a transposed kernel before some input-
    gradient ones. The reshapes merge or split only leading and trailing axes, so the batch
    sharding and a sharded heads/mlp axis carry over; GPU and TPU compilers canonicalise both
    forms to the same matmuls.
    """
    lead, contracted = x.shape[: x.ndim - num_in_axes], x.shape[x.ndim - num_in_axes :]
    out_shape = kernel.shape[num_in_axes:]
    rows = x.reshape(math.prod(lead), math.prod(contracted)).astype(dtype)
    matrix = kernel.reshape(math.prod(contracted), math.prod(out_shape)).astype(dtype)
    return (rows @ matrix).reshape(lead + out_shape)


class Dense(nn.Module):
    """y = x . kernel + bias, contracting the trailing `len(in_axes)` axes of x.

    `kernel_axes` names every kernel dimension (inputs first); the bias is named by the output part.
    """

    config: ModelConfig
    out_shape: tuple[int, ...]
    kernel_axes: LogicalAxes
    num_in_axes: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        in_shape = x.shape[-self.num_in_axes :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(dense_init(cfg), self.kernel_axes),
            in_shape + self.out_shape,
            jnp.dtype(cfg.param_dtype),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(
                nn.initializers.zeros, self.kernel_axes[self.num_in_axes :]
            ),
            self.out_shape,
            jnp.dtype(cfg.param_dtype),
        )
        dtype = jnp.dtype(cfg.dtype)
        if cpu_only_option(cfg.flat_dense):
            return matrix_product(x, kernel, self.num_in_axes, dtype) + bias.astype(dtype)
        contract = tuple(range(x.ndim - self.num_in_axes, x.ndim))
        y = jax.lax.dot_general(
            x.astype(dtype),
            kernel.astype(dtype),
            ((contract, tuple(range(self.num_in_axes))), ((), ())),
        )
        return y + bias.astype(dtype)


class MLP(nn.Module):
    """Position-wise feed-forward: wo(act(wi(x))) with biases and activation dropout."""

    config: ModelConfig
    ffn_dim: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = checkpoint_name(Dense(cfg, (self.ffn_dim,), ("embed", "mlp"), name="wi")(x), "mlp_wi")
        h = activation_fn(cfg.activation)(h)
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        h = Dropout(cfg.activation_dropout_rate, cfg.dropout_rng_impl)(
            h, deterministic=self.deterministic
        )
        return Dense(cfg, (cfg.d_model,), ("mlp", "embed"), name="wo")(h)


class Attention(nn.Module):
    """Multi-head attention with biases, scaling after q.k (the release's order).

    Modes:
      * plain: keys/values from `inputs_kv`; `mask` is a boolean [batch, 1, q_len, kv_len], or
        with attention_impl='splash' a `SegmentMask` (segment ids and causality).
      * `decode=True`, self-attention: keys/values are appended to a cache of `max_decode_length`
        steps; the causal mask comes from the cache index (the `mask` argument is ignored).
      * `decode=True`, cross-attention (`cache_kv=True`): keys/values are projected from
        `inputs_kv` on the first call and read from the cache afterwards.

    Decode caches are head-major, [batch, heads, length, head_dim], so that every step's q.k and
    weights.v contract them in place; a [batch, length, heads, head_dim] cache would be re-laid
    out in full at every step (on CPU that copy cost more than the rest of the step). Decode
    steps therefore always use the einsum path.
    """

    config: ModelConfig
    num_heads: int
    deterministic: bool = True
    decode: bool = False
    cache_kv: bool = False
    max_decode_length: int = 0

    @nn.compact
    def __call__(
        self, inputs_q: Array, inputs_kv: Array, mask: Array | SegmentMask | None
    ) -> Array:
        cfg = self.config
        head_dim = cfg.d_model // self.num_heads
        proj = lambda name: Dense(
            cfg, (self.num_heads, head_dim), ("embed", "heads", "kv"), name=name
        )
        qkv_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        if self.decode and not self.cache_kv and not self.is_initializing():
            # One decode step of self-attention: a single product with the stacked q/k/v
            # kernels instead of three small matmuls (docs/benchmarks.md, "Measurements behind
            # code choices"). The stack is loop-invariant, so XLA hoists it out of the decode loop.
            query, key, value = self._fused_self_projection(proj, inputs_q)
        elif not self.decode and cpu_only_option(cfg.flat_dense) and not self.is_initializing():
            # One 2-D product for the projections of the same input (docs/benchmarks.md,
            # "Measurements behind code choices"): N = 1536 or 1024 columns instead of 512.
            if inputs_kv is inputs_q:
                query, key, value = self._side_by_side(proj, inputs_q, ("query", "key", "value"))
            else:
                (query,) = self._side_by_side(proj, inputs_q, ("query",))
                key, value = self._side_by_side(proj, inputs_kv, ("key", "value"))
        else:
            query = proj("query")(inputs_q)
            if self.decode and self.cache_kv:
                key, value = self._cross_kv_from_cache(proj, inputs_kv)
            else:
                key, value = proj("key")(inputs_kv), proj("value")(inputs_kv)
        query = checkpoint_name(constrain(query, qkv_axes), "attention_q")
        if not (self.decode and self.cache_kv):
            key = checkpoint_name(constrain(key, qkv_axes), "attention_k")
            value = checkpoint_name(constrain(value, qkv_axes), "attention_v")
            if self.decode:
                key, value, mask = self._append_to_cache(key, value)

        scale = head_dim**-0.5
        dtype = jnp.dtype(cfg.dtype)
        if self.decode:
            weights = attention_probabilities(query, key, mask, scale, "bqhd,bhkd->bhqk")
            out = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(dtype), value)
        elif isinstance(mask, SegmentMask):
            out = splash_attention(query, key, value, mask, scale)
        elif cfg.attention_impl in ("dot_product", "cudnn"):
            implementation = "cudnn" if cfg.attention_impl == "cudnn" else None
            out = jax.nn.dot_product_attention(
                query, key, value, mask=mask, scale=scale, implementation=implementation
            )
        elif cfg.attention_dropout_rate == 0 or self.deterministic:
            groups = head_groups(self.num_heads, cpu_only_option(cfg.split_attention_heads))
            out = attention(query, key, value, mask, scale, groups)
        else:
            weights = attention_probabilities(query, key, mask, scale)
            weights = Dropout(cfg.attention_dropout_rate, cfg.dropout_rng_impl)(
                weights, deterministic=self.deterministic
            )
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), value)
        out = constrain(out.astype(dtype), qkv_axes)
        return Dense(cfg, (cfg.d_model,), ("heads", "kv", "embed"), num_in_axes=2, name="out")(out)

    def _fused_self_projection(self, proj, x: Array) -> tuple[Array, Array, Array]:
        """(query, key, value) [batch, length, heads, head_dim] of `x` from one dot_general with
        the three kernels stacked on a new, unsharded axis (heads stay where the rules put them)."""
        params = [proj(name).variables["params"] for name in ("query", "key", "value")]
        dtype = jnp.dtype(self.config.dtype)
        kernel = jnp.stack([p["kernel"] for p in params], axis=1).astype(dtype)
        bias = jnp.stack([p["bias"] for p in params], axis=0).astype(dtype)
        y = jax.lax.dot_general(x.astype(dtype), kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias
        return y[..., 0, :, :], y[..., 1, :, :], y[..., 2, :, :]

    def _side_by_side(self, proj, x: Array, names: tuple[str, ...]) -> list[Array]:
        """The projections `names` of x, [batch, length, heads, head_dim] each, from one 2-D
        product with their kernels side by side (a 2-D matrix of len(names) * d_model columns)."""
        params = [proj(name).variables["params"] for name in names]
        dtype = jnp.dtype(self.config.dtype)
        width = x.shape[-1]
        kernel = jnp.concatenate([p["kernel"].reshape(width, -1) for p in params], axis=1)
        bias = jnp.concatenate([p["bias"].reshape(-1) for p in params]).astype(dtype)
        y = matrix_product(x, kernel, 1, dtype) + bias
        head_shape = params[0]["bias"].shape
        return [part.reshape(x.shape[:-1] + head_shape) for part in jnp.split(y, len(names), -1)]

    def _cross_kv_from_cache(self, proj, inputs_kv: Array) -> tuple[Array, Array]:
        initialized = self.has_variable("cache", "cross_key")
        if not initialized:
            head_major = lambda x: jnp.swapaxes(x, 1, 2)
            key, value = head_major(proj("key")(inputs_kv)), head_major(proj("value")(inputs_kv))
            self.variable("cache", "cross_key", lambda: key)
            self.variable("cache", "cross_value", lambda: value)
            return key, value
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _append_to_cache(self, key: Array, value: Array) -> tuple[Array, Array, Array]:
        batch, length, heads, head_dim = key.shape
        shape = (batch, heads, self.max_decode_length, head_dim)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        start = index.value
        cached_key.value = jax.lax.dynamic_update_slice(
            cached_key.value, jnp.swapaxes(key, 1, 2), (0, 0, start, 0)
        )
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, jnp.swapaxes(value, 1, 2), (0, 0, start, 0)
        )
        index.value = start + length
        query_pos = start + jnp.arange(length)
        key_pos = jnp.arange(self.max_decode_length)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]
        return cached_key.value, cached_value.value, mask
