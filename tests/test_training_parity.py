"""Training-trajectory parity with the reference implementation (alexa-teacher-models 1.0.1).

A random tiny reference model is saved, converted by `convert_hf_to_checkpoint` and loaded, so
both sides start from bit-identical float32 weights. Then the same fixed batches (padded,
unpacked rows) go through our trainer's code path (`create_train_state`, a warm start from the
converted parameters, `make_train_step` with grad accumulation 2) and through the reference's
own forward pass with `torch.optim.AdamW` (decay / no-decay groups), the same warm-up and linear
decay, and `clip_grad_norm_`. The reference keeps `final_logits_bias` as a registered buffer:
it is never trained, and ours must not train it either (OptimizerConfig.buffers).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from alexatm_reference import random_reference_model, reference_config
from training_reference import Recipe, our_train_step

import alexatm_jax
from alexatm_jax.conversion.hf_to_jax import convert_hf_to_checkpoint
from alexatm_jax.conversion.jax_to_hf import hf_tensors
from alexatm_jax.training import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore:The `device` argument is deprecated")

STEPS = 24
ROWS, INPUT_LEN, TARGET_LEN = 8, 12, 10
PEAK_LR = 2e-3
RECIPE = Recipe(steps=STEPS, peak_lr=PEAK_LR, end_lr=1e-4, warmup=5)
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
# The attention key bias adds the same amount to every score of a query row, which the softmax
# ignores: its true gradient is identically zero. Both sides step on float rounding noise, which
# Adam (update ~ m / sqrt(v)) scales up to about the learning rate per step whatever its size.
# So the key biases are only held to the distance Adam can walk on noise: lr summed over steps.
KEY_BIAS_ATOL = sum(PEAK_LR for _ in range(STEPS))


def _batches(vocab_size: int, start_id: int) -> list[dict[str, np.ndarray]]:
    """STEPS fixed batches of unpacked rows: random lengths, padding marked by segment id 0."""
    rng = np.random.default_rng(2026)
    batches = []
    for _ in range(STEPS):
        enc_len = rng.integers(3, INPUT_LEN + 1, ROWS)
        dec_len = rng.integers(2, TARGET_LEN + 1, ROWS)
        enc_seg = (np.arange(INPUT_LEN)[None] < enc_len[:, None]).astype(np.int32)
        dec_seg = (np.arange(TARGET_LEN)[None] < dec_len[:, None]).astype(np.int32)
        targets = rng.integers(3, vocab_size, (ROWS, TARGET_LEN)).astype(np.int32) * dec_seg
        inputs = np.concatenate([np.full((ROWS, 1), start_id, np.int32), targets[:, :-1]], 1)
        batches.append(
            {
                "encoder_input_tokens": rng.integers(3, vocab_size, enc_seg.shape).astype(np.int32)
                * enc_seg,
                "encoder_segment_ids": enc_seg,
                "encoder_positions": np.arange(INPUT_LEN, dtype=np.int32)[None] * enc_seg,
                "decoder_input_tokens": inputs * dec_seg,
                "decoder_target_tokens": targets,
                "decoder_loss_weights": dec_seg.astype(np.float32),
                "decoder_segment_ids": dec_seg,
                "decoder_positions": np.arange(TARGET_LEN, dtype=np.int32)[None] * dec_seg,
            }
        )
    return batches


def _reference_trajectory(model, batches) -> tuple[list[float], dict[str, np.ndarray]]:
    """Per-step losses (nats/token, before the update) and final parameters of the reference,
    trained in eval mode: its encoder's own dropout settings default to 0.1, ours is 0."""
    optimizer = RECIPE.torch_adamw(model)
    losses = []
    for update, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = RECIPE.learning_rate(update)
        optimizer.zero_grad()
        t = {k: torch.from_numpy(v) for k, v in batch.items()}
        tokens = t["decoder_loss_weights"].sum()
        total = 0.0
        for micro in (slice(0, None, 2), slice(1, None, 2)):  # grad accumulation 2
            logits = model(
                input_ids=t["encoder_input_tokens"][micro].long(),
                attention_mask=t["encoder_segment_ids"][micro].long(),
                decoder_input_ids=t["decoder_input_tokens"][micro].long(),
                decoder_attention_mask=t["decoder_segment_ids"][micro].long(),
            ).logits
            per_token = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), t["decoder_target_tokens"][micro].long(), reduction="none"
            )
            loss = (per_token * t["decoder_loss_weights"][micro]).sum() / tokens
            loss.backward()
            total += float(loss.detach())
        losses.append(total)
        RECIPE.torch_step(model, optimizer)
    final = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return losses, final


def _our_trajectory(checkpoint, batches):
    """Per-step losses and final parameters (HF names) through our trainer's step."""
    loaded = alexatm_jax.load(checkpoint)
    model_config = loaded.config.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
    config = TrainConfig(
        model_config=model_config,
        train_steps=STEPS,
        batch_size=ROWS,
        grad_accum_steps=2,
        optimizer_config=RECIPE.optimizer_config,
    )
    state, step, partitioner = our_train_step(config, str(checkpoint))
    losses = []
    for batch in batches:
        state, metrics = step(state, partitioner.shard_batch(batch), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return losses, hf_tensors(model_config, jax.device_get(state.params))


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """(reference losses, reference params, our losses, our params, initial reference params)."""
    # The release's token embeddings are nn.Embedding(padding_idx=pad): the pad row gets no
    # gradient. As in the release's own config, the decoder starts from another id (here 2), so
    # the pad id (0) only ever sits on padding, where neither side sends a gradient.
    overrides = dict(
        share_embeddings=False,
        tie_word_embeddings=False,
        dropout=0.0,
        attention_dropout=0.0,
        decoder_start_token_id=2,
    )
    reference = random_reference_model(reference_config(**overrides), seed=16)
    initial = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    root = tmp_path_factory.mktemp("trajectory")
    reference.save_pretrained(root / "hf", safe_serialization=True)
    convert_hf_to_checkpoint(root / "hf", root / "ckpt", show_progress=False)
    batches = _batches(reference.config.vocab_size, reference.config.decoder_start_token_id)
    ours = _our_trajectory(root / "ckpt", batches)
    theirs = _reference_trajectory(reference, batches)
    return theirs[0], theirs[1], ours[0], ours[1], initial


def _is_key_bias(name: str) -> bool:
    return name.endswith(("key.bias", "k_proj.bias"))


def test_every_step_loss_matches_the_reference(trajectories):
    reference_losses, _, our_losses, _, _ = trajectories
    assert len(our_losses) == STEPS >= 20
    relative = np.abs(np.array(our_losses) - reference_losses) / np.array(reference_losses)
    assert relative.max() < LOSS_RTOL, f"per-step relative loss differences: {relative}"
    assert our_losses[-1] < our_losses[0] - 0.05, "the run did not learn: the check is empty"


def test_final_parameters_match_the_reference(trajectories):
    _, reference_params, _, our_params, initial = trajectories
    compared = sorted(set(reference_params) & set(our_params))
    assert "lm_head.weight" in compared and "final_logits_bias" in compared
    moved = [n for n in compared if not np.array_equal(reference_params[n], initial[n])]
    assert len(moved) > len(compared) // 2, "the reference trained nothing: the check is empty"
    for name in compared:
        ours, theirs = our_params[name], reference_params[name].reshape(our_params[name].shape)
        tolerance = KEY_BIAS_ATOL if _is_key_bias(name) else PARAM_ATOL
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=tolerance, err_msg=name)


def test_final_logits_bias_is_a_buffer_on_both_sides(trajectories):
    _, reference_params, _, our_params, initial = trajectories
    np.testing.assert_array_equal(
        reference_params["final_logits_bias"], initial["final_logits_bias"]
    )
    np.testing.assert_array_equal(
        our_params["final_logits_bias"].reshape(-1), initial["final_logits_bias"].reshape(-1)
    )
