"""Remat policies: every policy gives the gradients of no remat, and the named ones ('save_mlp',
'save_mlp_qkv') recompute less than 'full' (fewer matmul FLOPs in the backward pass)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_config import tiny_model_config

from alexatm_jax.model.config import REMAT_POLICIES
from alexatm_jax.model.params import init_params
from alexatm_jax.model.transformer import AlexaTM
from alexatm_jax.planning import matmul_flops

CONFIG = tiny_model_config(
    vocab_size=128, num_encoder_layers=2, num_decoder_layers=2, max_positions=64, scan_layers=True
)


def grad_fn(policy: str):
    model = AlexaTM(CONFIG.replace(remat_policy=policy))

    def loss(params, tokens):
        return jnp.mean(model.apply({"params": params}, tokens, tokens) ** 2)

    return jax.grad(loss)


@pytest.fixture(scope="module")
def inputs():
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 128, (2, 16)), jnp.int32)
    return init_params(CONFIG, jax.random.key(0)), tokens


@pytest.fixture(scope="module")
def recomputed_flops(inputs):
    return {
        policy: matmul_flops(jax.make_jaxpr(grad_fn(policy))(*inputs).jaxpr)
        for policy in REMAT_POLICIES
    }


def test_named_policies_recompute_less_than_full(recomputed_flops):
    flops = recomputed_flops
    assert flops["none"] < flops["save_mlp_qkv"] < flops["save_mlp"] < flops["full"]
    assert flops["dots_no_batch"] < flops["full"]


@pytest.mark.parametrize("policy", ["save_mlp", "save_mlp_qkv"])
def test_policy_gradients_equal_no_remat(policy, inputs, reference_grads):
    got = jax.jit(grad_fn(policy))(*inputs)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.fixture(scope="module")
def reference_grads(inputs):
    return jax.jit(grad_fn("none"))(*inputs)
