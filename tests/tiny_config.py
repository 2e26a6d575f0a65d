"""The tiny model most tests build: one layer each side, d_model 32, the test tokenizers' ids."""

from __future__ import annotations

from typing import Any

from alexatm_jax.model import ModelConfig

TINY_MODEL_CONFIG = ModelConfig(
    vocab_size=64,
    d_model=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    num_encoder_heads=2,
    num_decoder_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_positions=32,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """TINY_MODEL_CONFIG with `overrides` (ModelConfig fields) replaced."""
    return TINY_MODEL_CONFIG.replace(**overrides)
