"""Evaluation's programs on abstract inputs, compiled for a layout's devices (the compile-only
devices of a TPU slice, `alexatm_jax.tpu_topology`), allocating nothing.

* prefill: `model_steps.encode` over [batch, input_len], the LM head, and the first
  `model_steps.decoder_step` with no cache (it creates the self-attention cache of cache_len
  steps and projects the cross-attention K/V once); returns the logits, the cache and the
  encoder states, which the decode loop keeps.
* decode_step: one `decoder_step` for [batch] tokens given that cache (donated, as the loop
  carry is updated in place) and the encoder states [batch, input_len, d_model].
* scoring: `scoring.target_log_probs` over [batch, input_len] inputs, [batch, target_len]
  targets.

Parameters come in the config's param_dtype, sharded by `Partitioner.params_shardings`; token
rows are split over the batch mesh axes; the cache's K/V [batch, heads, length, head_dim] are
sharded like the activations they are made of (batch over the batch axes, heads by the rules).
Every program keeps the parameters it does not read (a decoder step reads no encoder) among its
arguments, so that its memory counts all that a chip holds while evaluating.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from alexatm_jax.decoding import model_steps
from alexatm_jax.decoding.scoring import target_log_probs
from alexatm_jax.eval_planning.programs import DECODE_STEP, PREFILL, Layout, ProgramShape
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import param_shapes
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.planning import (
    CompiledStep,
    compile_lowered,
    matmul_flops,
    measure_compiled,
    shard_bytes,
)

KV_CACHE_AXES = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
# What a decoder step reads of the parameters, by top-level name; the decoder's own position
# embedder is a row gather and left out with the token embedders.
DECODER_STEP_PARAMS = ("decoder", "lm_head", "final_logits_bias")


def layout_partitioner(layout: Layout, devices: list[Any]) -> Partitioner:
    """The Partitioner of `layout` over `devices` (all of them)."""
    mesh = MeshConfig(data=layout.data, fsdp=layout.fsdp, tensor=layout.tensor)
    return Partitioner(mesh, layout.rules, devices=devices)


def abstract_params(config: ModelConfig, partitioner: Partitioner) -> Any:
    """The parameters as ShapeDtypeStructs (param_dtype) with the partitioner's shardings."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        param_shapes(config),
        partitioner.params_shardings(config),
    )


def params_bytes_per_chip(config: ModelConfig, partitioner: Partitioner) -> int:
    """Bytes of parameters one chip holds."""
    params = abstract_params(config, partitioner)
    return shard_bytes(params, jax.tree.map(lambda leaf: leaf.sharding, params))


def decoder_step_param_bytes_per_chip(config: ModelConfig, partitioner: Partitioner) -> int:
    """Bytes one chip holds of the parameters a decoder step reads (DECODER_STEP_PARAMS, the
    decoder's position embedder left out)."""
    params = abstract_params(config, partitioner)
    read = {name: params[name] for name in DECODER_STEP_PARAMS if name in params}
    read["decoder"] = {k: v for k, v in read["decoder"].items() if k != "position_embedder"}
    return shard_bytes(read, jax.tree.map(lambda leaf: leaf.sharding, read))


def token_rows(partitioner: Partitioner, batch: int, length: int) -> jax.ShapeDtypeStruct:
    """int32 [batch, length] token or segment ids, rows over the batch mesh axes."""
    return jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=partitioner.batch_sharding(2))


def prefill(
    params: Any, tokens: jax.Array, segments: jax.Array, *, config: ModelConfig, cache_len: int
) -> tuple[jax.Array, Any, jax.Array]:
    """(float32 logits [batch, vocab] of the first step, the new cache, encoder states)."""
    encoded = model_steps.encode(config, params, tokens, segments)
    head = model_steps.output_head(config, params)
    start = jnp.full((tokens.shape[0],), config.decoder_start_token_id, jnp.int32)
    step = jnp.array(0, jnp.int32)
    logits, cache = model_steps.decoder_step(
        config, params, head, None, encoded, segments, start, step, cache_len
    )
    return logits, cache, encoded


def decode_step(
    params: Any,
    cache: Any,
    encoded: jax.Array,
    segments: jax.Array,
    tokens: jax.Array,
    step: jax.Array,
    *,
    config: ModelConfig,
    cache_len: int,
) -> tuple[jax.Array, Any]:
    """(float32 logits [batch, vocab], the cache with position `step` appended)."""
    head = model_steps.output_head(config, params)
    return model_steps.decoder_step(
        config, params, head, cache, encoded, segments, tokens, step, cache_len
    )


def scoring(params: Any, *rows: jax.Array, config: ModelConfig) -> jax.Array:
    """`target_log_probs(params, inputs, input segments, targets, target mask)`."""
    return target_log_probs(params, *rows, config=config)


def cache_shardings(cache: Any, config: ModelConfig, partitioner: Partitioner) -> Any:
    """NamedSharding per cache leaf: K/V by KV_CACHE_AXES (a leading layers axis unsharded
    under scan_layers), the cache index replicated."""
    kv_names = model_steps.SELF_ATTENTION_CACHE_LEAVES + model_steps.CROSS_ATTENTION_CACHE_LEAVES
    layers = (None,) if config.scan_layers else ()

    def sharding(path: Any, leaf: Any) -> NamedSharding:
        if getattr(path[-1], "key", None) not in kv_names:
            return partitioner.replicated
        spec = partitioner.logical_to_mesh_spec(layers + KV_CACHE_AXES, leaf.shape)
        return NamedSharding(partitioner.mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, cache)


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


def program_call(
    shape: ProgramShape, config: ModelConfig
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """(the function of `shape`'s program, its arguments' positions to donate); trace it on
    `program_arguments`."""
    if shape.program == PREFILL:
        return functools.partial(prefill, config=config, cache_len=shape.cache_len), ()
    if shape.program == DECODE_STEP:
        return functools.partial(decode_step, config=config, cache_len=shape.cache_len), (1,)
    return functools.partial(scoring, config=config), ()


def program_arguments(
    shape: ProgramShape, config: ModelConfig, partitioner: Partitioner
) -> tuple[Any, ...]:
    """The abstract, sharded arguments of `shape`'s program."""
    params = abstract_params(config, partitioner)
    inputs = token_rows(partitioner, shape.batch, shape.input_len)
    if shape.program == PREFILL:
        return (params, inputs, inputs)
    if shape.program == DECODE_STEP:
        make_cache = functools.partial(prefill, config=config, cache_len=shape.cache_len)
        with partitioner.activate():
            _, cache, encoded = jax.eval_shape(make_cache, params, inputs, inputs)
        cache = _with_shardings(cache, cache_shardings(cache, config, partitioner))
        encoded = jax.ShapeDtypeStruct(
            encoded.shape, encoded.dtype, sharding=partitioner.batch_sharding(3)
        )
        tokens = jax.ShapeDtypeStruct(
            (shape.batch,), jnp.int32, sharding=partitioner.batch_sharding(1)
        )
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=partitioner.replicated)
        return (params, cache, encoded, inputs, tokens, step)
    targets = token_rows(partitioner, shape.batch, shape.target_len)
    return (params, inputs, inputs, targets, targets)


def compile_program(
    shape: ProgramShape, config: ModelConfig, partitioner: Partitioner
) -> CompiledStep:
    """The compiler's per-chip memory and cost figures of `shape`'s program for `config` (its
    depth and scan_layers as given). Raises planning.DoesNotFit when the compiler runs out of
    device memory."""
    function, donated = program_call(shape, config)
    arguments = program_arguments(shape, config, partitioner)
    program = jax.jit(function, donate_argnums=donated, keep_unused=True)
    with partitioner.activate():  # the model's logical constraints need the mesh and rules
        traced = program.trace(*arguments)
        compiled = compile_lowered(traced.lower())
    return measure_compiled(compiled, matmul_flops(traced.jaxpr.jaxpr))
