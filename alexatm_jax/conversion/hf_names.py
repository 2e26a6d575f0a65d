"""The correspondence between HuggingFace AlexaTM state-dict keys and our parameter paths.

Each `TensorMapping` says where one HF tensor lives in our *unscanned* parameter tree and how its
layout changes: torch Linear weights are [out, in]; our kernels are [in, ...out] with attention
heads split out ([embed, heads, head_dim] for q/k/v, [heads, head_dim, embed] for the output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from alexatm_jax.model.config import ModelConfig

Path = tuple[str, ...]

# HF keys that carry no parameter (buffers recreated by the reference at load time).
IGNORED_HF_KEYS = ("model.encoder.position_ids",)
# HF keys that alias another key of the same state dict.
ALIASES = {"model.encoder.token_embeddings.weight": "model.shared.weight"}
# HF keys the reference recreates when absent (zeros), so a checkpoint may omit them.
OPTIONAL_HF_KEYS = ("final_logits_bias",)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One HF tensor <-> one leaf of our unscanned tree.

    kind: `copy` (same layout), `linear` (transpose [out, in] -> [in, out]), `q_kv` (linear, then
    split the output into heads), `attn_out` (linear, then split the input into heads),
    `row` (drop the leading size-1 axis of final_logits_bias).
    """

    hf_key: str
    path: Path
    kind: str
    heads: int = 0

    def to_ours(self, tensor: np.ndarray) -> np.ndarray:
        """HF layout -> our layout."""
        if self.kind == "copy":
            return tensor
        if self.kind == "row":
            return tensor.reshape(-1)
        t = tensor.T
        if self.kind == "linear":
            return t
        if self.kind == "q_kv":
            return (
                t.reshape(t.shape[0], self.heads, -1) if t.ndim == 2 else t.reshape(self.heads, -1)
            )
        if self.kind == "attn_out":
            return t.reshape(self.heads, -1, t.shape[-1])
        raise ValueError(f"unknown mapping kind {self.kind!r}")

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The HF tensor shape for a leaf of our shape `shape`."""
        if self.kind == "copy":
            return tuple(shape)
        if self.kind == "row":
            return (1, int(np.prod(shape)))
        if self.kind == "q_kv":
            return (
                (int(np.prod(shape[1:])), shape[0]) if len(shape) == 3 else (int(np.prod(shape)),)
            )
        if self.kind == "attn_out":
            return (shape[-1], int(np.prod(shape[:-1])))
        return tuple(reversed(shape))

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        """Our layout -> HF layout."""
        if self.kind == "copy":
            return array
        if self.kind == "row":
            return array.reshape(1, -1)
        if self.kind == "q_kv":
            flat = array.reshape(array.shape[0], -1) if array.ndim == 3 else array.reshape(-1)
            return flat.T
        if self.kind == "attn_out":
            return array.reshape(-1, array.shape[-1]).T
        return array.T


def _linear(
    hf_prefix: str, path: Path, kind: str = "linear", heads: int = 0
) -> list[TensorMapping]:
    bias_kind = "q_kv" if kind == "q_kv" else "copy"
    return [
        TensorMapping(f"{hf_prefix}.weight", path + ("kernel",), kind, heads),
        TensorMapping(f"{hf_prefix}.bias", path + ("bias",), bias_kind, heads),
    ]


def _norm(hf_prefix: str, path: Path) -> list[TensorMapping]:
    return [
        TensorMapping(f"{hf_prefix}.weight", path + ("scale",), "copy"),
        TensorMapping(f"{hf_prefix}.bias", path + ("bias",), "copy"),
    ]


def _attention(
    hf_prefix: str, names: dict[str, str], path: Path, heads: int
) -> list[TensorMapping]:
    out = []
    for ours in ("query", "key", "value"):
        out += _linear(f"{hf_prefix}.{names[ours]}", path + (ours,), "q_kv", heads)
    return out + _linear(f"{hf_prefix}.{names['out']}", path + ("out",), "attn_out", heads)


def encoder_layer_mappings(cfg: ModelConfig, i: int, layer_path: Path) -> list[TensorMapping]:
    """Mappings of encoder layer i (HF `pre_ln_encoder.layer.{i}`) onto `layer_path`."""
    p = f"model.encoder.pre_ln_encoder.layer.{i}"
    names = {"query": "self.query", "key": "self.key", "value": "self.value", "out": "output.dense"}
    return (
        _norm(f"{p}.layer_norm", layer_path + ("attention_norm",))
        + _attention(f"{p}.attention", names, layer_path + ("attention",), cfg.num_encoder_heads)
        + _norm(f"{p}.intermediate.layer_norm", layer_path + ("mlp_norm",))
        + _linear(f"{p}.intermediate.dense", layer_path + ("mlp", "wi"))
        + _linear(f"{p}.output.dense", layer_path + ("mlp", "wo"))
    )


def decoder_layer_mappings(cfg: ModelConfig, i: int, layer_path: Path) -> list[TensorMapping]:
    """Mappings of decoder layer i (HF `decoder.layers.{i}`) onto `layer_path`."""
    p = f"model.decoder.layers.{i}"
    names = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
    h = cfg.num_decoder_heads
    return (
        _norm(f"{p}.self_attn_layer_norm", layer_path + ("self_attention_norm",))
        + _attention(f"{p}.self_attn", names, layer_path + ("self_attention",), h)
        + _norm(f"{p}.encoder_attn_layer_norm", layer_path + ("cross_attention_norm",))
        + _attention(f"{p}.encoder_attn", names, layer_path + ("cross_attention",), h)
        + _norm(f"{p}.final_layer_norm", layer_path + ("mlp_norm",))
        + _linear(f"{p}.fc1", layer_path + ("mlp", "wi"))
        + _linear(f"{p}.fc2", layer_path + ("mlp", "wo"))
    )


def tensor_mappings(cfg: ModelConfig) -> Iterator[TensorMapping]:
    """Every parameter of `cfg`, in HF state-dict order, with paths in the unscanned layout."""
    yield TensorMapping("model.shared.weight", ("token_embedder", "embedding"), "copy")
    yield TensorMapping(
        "model.encoder.position_embeddings.weight",
        ("encoder", "position_embedder", "embedding"),
        "copy",
    )
    yield TensorMapping(
        "model.encoder.token_type_embeddings.weight",
        ("encoder", "token_type_embedder", "embedding"),
        "copy",
    )
    for i in range(cfg.num_encoder_layers):
        yield from encoder_layer_mappings(cfg, i, ("encoder", f"layers_{i}"))
    yield from _norm("model.encoder.pre_ln_encoder.layer_norm", ("encoder", "final_norm"))
    if not cfg.share_embeddings:
        yield TensorMapping(
            "model.decoder.embed_tokens.weight", ("decoder_token_embedder", "embedding"), "copy"
        )
    yield TensorMapping(
        "model.decoder.embed_positions.weight",
        ("decoder", "position_embedder", "embedding"),
        "copy",
    )
    for i in range(cfg.num_decoder_layers):
        yield from decoder_layer_mappings(cfg, i, ("decoder", f"layers_{i}"))
    yield from _norm("model.decoder.layernorm_output", ("decoder", "final_norm"))
    if not cfg.tie_word_embeddings:
        yield TensorMapping("lm_head.weight", ("lm_head",), "linear")
    yield TensorMapping("final_logits_bias", ("final_logits_bias",), "row")


def hf_aliases(cfg: ModelConfig) -> dict[str, str]:
    """HF key -> the key holding the same tensor, for `cfg`'s embedding sharing and tying.

    The encoder's token embedding is `model.shared`; with share_embeddings the decoder's is too;
    with tie_word_embeddings `lm_head.weight` is the decoder's token embedding ([vocab, embed]).
    Chains are resolved: every value is a key of `tensor_mappings(cfg)`.
    """
    aliases = dict(ALIASES)
    decoder_embedding = "model.decoder.embed_tokens.weight"
    if cfg.share_embeddings:
        aliases[decoder_embedding] = "model.shared.weight"
        decoder_embedding = "model.shared.weight"
    if cfg.tie_word_embeddings:
        aliases["lm_head.weight"] = decoder_embedding
    return aliases


def hf_config_to_model_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Our ModelConfig from an AlexaTMSeq2SeqConfig `config.json` dict (release defaults apply)."""
    if hf.get("model_type", "alexatm") != "alexatm":
        raise ValueError(f"config.json has model_type={hf.get('model_type')!r}, expected 'alexatm'")
    act = hf.get("activation_function", hf.get("hidden_act", "gelu"))
    values = dict(
        vocab_size=hf.get("vocab_size", 50265),
        d_model=hf.get("d_model", 1024),
        num_encoder_layers=hf.get("encoder_layers", 12),
        num_decoder_layers=hf.get("decoder_layers", 12),
        num_encoder_heads=hf.get("encoder_attention_heads", 16),
        num_decoder_heads=hf.get("decoder_attention_heads", 16),
        encoder_ffn_dim=hf.get("encoder_ffn_dim", 4096),
        decoder_ffn_dim=hf.get("decoder_ffn_dim", 4096),
        max_positions=hf.get("max_position_embeddings", 1024),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=act,
        share_embeddings=bool(hf.get("share_embeddings", True)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout_rate=hf.get("dropout", 0.1),
        attention_dropout_rate=hf.get("attention_dropout", 0.0),
        activation_dropout_rate=hf.get("activation_dropout", 0.0),
        init_std=hf.get("init_std", 0.02),
        pad_token_id=_id(hf, "pad_token_id", 1),
        eos_token_id=_id(hf, "eos_token_id", 2),
        bos_token_id=_id(hf, "bos_token_id", 0),
        decoder_start_token_id=_id(hf, "decoder_start_token_id", _id(hf, "eos_token_id", 2)),
    )
    values.update(overrides)
    return ModelConfig(**values)


def _id(hf: dict[str, Any], key: str, default: int) -> int:
    value = hf.get(key, default)
    return default if value is None else int(value)


def model_config_to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """An AlexaTMSeq2SeqConfig `config.json` dict for `cfg`."""
    return {
        "architectures": ["AlexaTMSeq2SeqForConditionalGeneration"],
        "model_type": "alexatm",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.num_encoder_layers,
        "decoder_layers": cfg.num_decoder_layers,
        "encoder_attention_heads": cfg.num_encoder_heads,
        "decoder_attention_heads": cfg.num_decoder_heads,
        "encoder_ffn_dim": cfg.encoder_ffn_dim,
        "decoder_ffn_dim": cfg.decoder_ffn_dim,
        "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": cfg.activation,
        "share_embeddings": cfg.share_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "dropout": cfg.dropout_rate,
        "hidden_dropout_prob": cfg.dropout_rate,
        "attention_dropout": cfg.attention_dropout_rate,
        "attention_probs_dropout_prob": cfg.attention_dropout_rate,
        "activation_dropout": cfg.activation_dropout_rate,
        "init_std": cfg.init_std,
        "initializer_range": cfg.init_std,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "bos_token_id": cfg.bos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "is_encoder_decoder": True,
    }
