"""The model configuration: one frozen dataclass, bound by gin in `alexatm_jax.gin_registry`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")
# einsum: explicit softmax (attention dropout supported); dot_product: jax.nn.dot_product_attention,
# XLA picks the kernel; cudnn: the same call forced onto cuDNN flash attention (GPU, bf16/fp16);
# splash: the Pallas TPU splash-attention kernels (model/splash.py; elsewhere the Pallas
# interpreter runs them, for tests).
ATTENTION_IMPLEMENTATIONS = ("einsum", "dot_product", "cudnn", "splash")
# none: keep everything; full: keep each layer's input only; dots / dots_no_batch: keep every
# matmul output / those without batch dimensions (the projections, not q.k); save_mlp: keep the
# FFN's first projection ('mlp_wi', 4 x d_model per token), the largest recompute of 'full';
# save_mlp_qkv: also the attention's q, k, v.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_mlp", "save_mlp_qkv")
# How dropout masks are drawn (alexatm_jax/model/dropout.py): threefry_packed = one Threefry hash
# per four elements (a quarter of jax.random.bernoulli's hashes, same guarantees); the others are
# jax.random.bernoulli with a key of that PRNG implementation.
DROPOUT_RNG_IMPLS = ("threefry_packed", "threefry2x32", "rbg", "unsafe_rbg")
# CPU-only program shapes (cotangent barriers at every residual-stream sublayer input; Dense
# products as one 2-D matmul; attention in one head group per core, model/attention_core.py):
# "auto" = on when JAX runs on CPU, "on", "off".
COTANGENT_BARRIERS = ("auto", "on", "off")
FLAT_DENSE = COTANGENT_BARRIERS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of an AlexaTM-style pre-LN encoder-decoder.

    Defaults follow the release code (`alexa-teacher-models` 1.0.1) where the paper is silent.
    `head_dim` is derived: d_model must be divisible by both head counts.
    """

    vocab_size: int = 32128
    d_model: int = 512
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_encoder_heads: int = 8
    num_decoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    max_positions: int = 1024
    type_vocab_size: int = 2
    decoder_position_offset: int = 2
    layer_norm_eps: float = 1e-12
    uncentered_layer_norm: bool = True
    activation: str = "gelu"
    share_embeddings: bool = False
    tie_word_embeddings: bool = False
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    activation_dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "einsum"
    dropout_rng_impl: str = "threefry_packed"
    cotangent_barriers: str = "auto"
    flat_dense: str = "auto"
    split_attention_heads: str = "auto"
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = -1
    decoder_start_token_id: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "vocab_size",
            "d_model",
            "num_encoder_layers",
            "num_decoder_layers",
            "num_encoder_heads",
            "num_decoder_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_positions",
            "type_vocab_size",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for heads in (self.num_encoder_heads, self.num_decoder_heads):
            if heads >= 1 and self.d_model % heads:
                problems.append(f"d_model={self.d_model} is not divisible by {heads} heads")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            problems.append(
                f"attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention_impl!r}"
            )
        if self.dropout_rng_impl not in DROPOUT_RNG_IMPLS:
            problems.append(
                f"dropout_rng_impl must be one of {DROPOUT_RNG_IMPLS}, "
                f"got {self.dropout_rng_impl!r}"
            )
        for name in ("cotangent_barriers", "flat_dense", "split_attention_heads"):
            if getattr(self, name) not in COTANGENT_BARRIERS:
                problems.append(
                    f"{name} must be one of {COTANGENT_BARRIERS}, got {getattr(self, name)!r}"
                )
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(
                f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"
            )
        for name in ("dropout_rate", "attention_dropout_rate", "activation_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attention_impl != "einsum" and self.attention_dropout_rate > 0:
            problems.append(
                f"attention_impl={self.attention_impl!r} has no attention-probability dropout: "
                "set attention_dropout_rate=0 or attention_impl='einsum'"
            )
        if problems:
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

    @property
    def encoder_head_dim(self) -> int:
        """Width of one encoder attention head."""
        return self.d_model // self.num_encoder_heads

    @property
    def decoder_head_dim(self) -> int:
        """Width of one decoder attention head."""
        return self.d_model // self.num_decoder_heads

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, saved next to every checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown ModelConfig fields {unknown}; known fields are {sorted(known)}"
            )
        return cls(**values)

    def to_json(self) -> str:
        """Indented JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def architecture(self) -> dict[str, Any]:
        """The fields that decide parameter shapes/semantics (not numerics or run-time options).

        Two configs with equal architectures can load each other's checkpoints.
        """
        runtime = {
            "dropout_rate",
            "attention_dropout_rate",
            "activation_dropout_rate",
            "init_std",
            "dtype",
            "remat_policy",
            "attention_impl",
            "scan_layers",
            "dropout_rng_impl",
            "cotangent_barriers",
            "flat_dense",
            "split_attention_heads",
        }
        return {k: v for k, v in self.to_dict().items() if k not in runtime}
