"""attention_impl='splash' (Pallas TPU splash kernels, run here in the Pallas interpreter) against
'dot_product' in float32: loss and gradients of a packed batch, and the attention alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexatm_jax.model import masks
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import init_params, model_inputs
from alexatm_jax.model.splash import SegmentMask, splash_attention, splash_kernel_flops
from alexatm_jax.model.transformer import AlexaTM
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.training.loss import token_statistics

TOLERANCE = 1e-5


def packed_batch(batch: int, inputs_len: int, targets_len: int, vocab: int, seed: int = 0):
    """Rows of 1-3 packed segments each, then padding (segment 0, loss weight 0)."""
    rng = np.random.default_rng(seed)

    def segments(length: int, row: int) -> np.ndarray:
        used = length - 7 * row  # every row but the first ends in padding
        cuts = np.sort(rng.choice(np.arange(5, used - 5), size=row % 3, replace=False))
        ids = np.zeros(length, np.int32)
        for i, (start, end) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, used])):
            ids[start:end] = i + 1
        return ids

    enc = np.stack([segments(inputs_len, r) for r in range(batch)])
    dec = np.stack([segments(targets_len, r) for r in range(batch)])
    positions = lambda ids: np.stack(
        [np.concatenate([np.arange(np.sum(row == s)) for s in np.unique(row)]) for row in ids]
    ).astype(np.int32)
    targets = np.where(dec > 0, rng.integers(3, vocab, dec.shape), 0).astype(np.int32)
    return {
        "encoder_input_tokens": np.where(enc > 0, rng.integers(3, vocab, enc.shape), 0).astype(
            np.int32
        ),
        "encoder_segment_ids": enc,
        "encoder_positions": positions(enc),
        "decoder_input_tokens": np.where(dec > 0, np.roll(targets, 1, axis=1), 0).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_segment_ids": dec,
        "decoder_positions": positions(dec),
        "decoder_loss_weights": (dec > 0).astype(np.float32),
    }


def loss_and_grads(config: ModelConfig, params, batch):
    def loss(params):
        logits = AlexaTM(config).apply({"params": params}, **model_inputs(batch))
        stats = token_statistics(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        )
        return stats["loss_sum"] / stats["num_target_tokens"]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def tiny(tiny_model_config):
    config = tiny_model_config.replace(
        vocab_size=256, max_positions=256, attention_impl="dot_product"
    )
    return config, init_params(config, jax.random.key(0))


def test_packed_loss_and_gradients_match_dot_product(tiny):
    """Encoder 128 and decoder 256 positions: unequal cross-attention lengths, 1-3 segments
    and trailing padding per row. Loss and every gradient within 1e-5."""
    config, params = tiny
    batch = packed_batch(3, 128, 256, config.vocab_size)
    reference_loss, reference_grads = loss_and_grads(config, params, batch)
    loss, grads = loss_and_grads(config.replace(attention_impl="splash"), params, batch)
    assert abs(float(loss) - float(reference_loss)) < TOLERANCE
    differences = jax.tree.leaves(
        jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, reference_grads)
    )
    assert max(differences) < TOLERANCE
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_masked_softmax_on_unaligned_lengths(causal):
    """Lengths that are not multiples of the kernel's 128-wide blocks are padded and cut; real
    queries agree with dot_product attention under the equivalent boolean mask."""
    rng = np.random.default_rng(1)
    q_len, kv_len = (100, 100) if causal else (70, 150)
    q, k, v = (
        jnp.asarray(rng.normal(size=(2, n, 2, 16)), jnp.float32) for n in (q_len, kv_len, kv_len)
    )
    q_ids = jnp.asarray(np.repeat([[1, 2]], q_len // 2, axis=1).reshape(1, -1).repeat(2, 0))
    kv_ids = (
        jnp.asarray(np.sort(rng.integers(0, 3, (2, kv_len)), axis=1)[:, ::-1].copy())
        if not causal
        else q_ids
    )
    out = splash_attention(q, k, v, SegmentMask(q_ids, kv_ids, causal=causal), 0.25)
    if causal:
        mask = masks.decoder_self_mask(q_ids, q_len)
    else:
        mask = masks.cross_mask(q_ids, kv_ids, q_len)
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.25)
    real = np.asarray(mask).any(axis=-1)[:, 0]  # queries with at least one attendable key
    assert real.sum() > 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(expected)[real], atol=TOLERANCE)


def test_splash_refuses_attention_dropout():
    with pytest.raises(ValueError, match="attention_impl='splash' has no attention-probability"):
        ModelConfig(attention_impl="splash", attention_dropout_rate=0.1)


def test_splash_under_a_mesh_runs_in_shard_map_and_matches(tiny):
    """Under the partitioner's mesh the kernel runs inside shard_map (one CPU device here; the
    TPU AOT test compiles it over 4 chips)."""
    config, params = tiny
    batch = packed_batch(2, 128, 128, config.vocab_size, seed=3)
    reference_loss, _ = loss_and_grads(config, params, batch)
    partitioner = Partitioner(MeshConfig(data=1, fsdp=1, tensor=1), "fsdp_tensor")
    with partitioner.activate():
        loss, grads = loss_and_grads(config.replace(attention_impl="splash"), params, batch)
    assert abs(float(loss) - float(reference_loss)) < TOLERANCE
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_kernel_flops_count_forward_backward_and_remat():
    """What the planner adds for the kernels the TPU cost model does not cost: 1024-long
    sequences, one layer each side; causal self-attention computes 3 of its 4 512-blocks."""
    config = ModelConfig(
        d_model=256,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_encoder_heads=2,
        num_decoder_heads=2,
        max_positions=1024,
    )
    unit = 1024 * 1024 * 256
    assert splash_kernel_flops(config, 1, 1024, 1024) == 14 * unit * (1 + 0.75 + 1)
    remat = splash_kernel_flops(config.replace(remat_policy="full"), 2, 1024, 1024)
    assert remat == 2 * 18 * unit * (1 + 0.75 + 1)
