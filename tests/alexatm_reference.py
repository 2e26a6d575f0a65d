"""Test helpers around the reference implementation (alexa-teacher-models 1.0.1, PyTorch).

Tiny random reference models whose LayerNorm weights/biases and logits bias are random too,
padded batches in T5X feature names, and the reference's logits for such a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from alexa_teacher_models import AlexaTMSeq2SeqConfig, AlexaTMSeq2SeqForConditionalGeneration

TINY_REFERENCE = dict(
    vocab_size=97,
    d_model=32,
    encoder_layers=3,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=48,
    max_position_embeddings=24,
    type_vocab_size=2,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    decoder_start_token_id=0,
)


def reference_config(**overrides: Any) -> AlexaTMSeq2SeqConfig:
    """A tiny AlexaTMSeq2SeqConfig; `overrides` replace TINY_REFERENCE entries."""
    return AlexaTMSeq2SeqConfig(**(TINY_REFERENCE | overrides))


def random_reference_model(
    config: AlexaTMSeq2SeqConfig, seed: int
) -> AlexaTMSeq2SeqForConditionalGeneration:
    """An eval-mode reference model with random weights, LayerNorms and final_logits_bias."""
    torch.manual_seed(seed)
    model = AlexaTMSeq2SeqForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                centre = 1.0 if name.endswith("weight") else 0.0
                param.copy_(centre + 0.5 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
    return model


def padded_batch(
    rng: np.random.Generator,
    vocab_size: int,
    type_vocab_size: int,
    encoder_lengths: list[int],
    decoder_lengths: list[int],
) -> dict[str, np.ndarray]:
    """Random tokens padded to the longest row; segment ids 1 on real tokens, 0 on padding."""

    def tokens_and_segments(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
        width = max(lengths)
        segments = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
        tokens = rng.integers(3, vocab_size, (len(lengths), width)).astype(np.int32)
        return tokens * segments, segments

    enc, enc_seg = tokens_and_segments(encoder_lengths)
    dec, dec_seg = tokens_and_segments(decoder_lengths)
    types = rng.integers(0, type_vocab_size, enc.shape).astype(np.int32) * enc_seg
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec,
        "encoder_segment_ids": enc_seg,
        "decoder_segment_ids": dec_seg,
        "encoder_token_type_ids": types,
    }


def reference_logits(
    model: AlexaTMSeq2SeqForConditionalGeneration, batch: dict[str, np.ndarray]
) -> np.ndarray:
    """The reference's float32 logits for `batch` (token types passed through its encoder)."""
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    with torch.no_grad():
        encoded = model.model.encoder(
            input_ids=t["encoder_input_tokens"],
            attention_mask=t["encoder_segment_ids"],
            token_type_ids=t["encoder_token_type_ids"],
        )
        out = model(
            attention_mask=t["encoder_segment_ids"],
            encoder_outputs=encoded,
            decoder_input_ids=t["decoder_input_tokens"],
            decoder_attention_mask=t["decoder_segment_ids"],
        )
    return out.logits.float().numpy()


def max_abs_diff_on_real_positions(
    ours: np.ndarray, theirs: np.ndarray, batch: dict[str, np.ndarray]
) -> float:
    """Largest |ours - theirs| over decoder positions that are not padding."""
    real = batch["decoder_segment_ids"].astype(bool)
    return float(np.abs(ours - theirs)[real].max())
