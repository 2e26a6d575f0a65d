"""The AlexaTM pre-LN encoder-decoder (docs/paper_facts.md#model) as Flax Linen modules.

Parameter tree (scanned layout puts every layer under `layers` with a leading `layers` axis;
the unscanned layout uses `layers_0`, `layers_1`, ...):

    token_embedder/embedding              [vocab, embed]  encoder input (shared when share_embeddings)
    decoder_token_embedder/embedding      [vocab, embed]  absent when share_embeddings
    encoder/position_embedder/embedding   [max_positions, embed]
    encoder/token_type_embedder/embedding [type_vocab, embed]
    encoder/layers*/{attention_norm, attention/{query,key,value,out}, mlp_norm, mlp/{wi,wo}}
    encoder/final_norm
    decoder/position_embedder/embedding   [max_positions + offset, embed]
    decoder/layers*/{self_attention_norm, self_attention, cross_attention_norm, cross_attention,
                     mlp_norm, mlp}
    decoder/final_norm
    lm_head/kernel                        [embed, vocab]  absent when tie_word_embeddings
    final_logits_bias                     [vocab]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexatm_jax.model import masks
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.dropout import Dropout
from alexatm_jax.model.layers import (
    MLP,
    Attention,
    LayerNorm,
    constrain,
    cotangent_barrier,
    dense_init,
)
from alexatm_jax.model.splash import SegmentMask

Array = jax.Array
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_mlp": jax.checkpoint_policies.save_only_these_names("mlp_wi"),
    "save_mlp_qkv": jax.checkpoint_policies.save_only_these_names(
        "mlp_wi", "attention_q", "attention_k", "attention_v"
    ),
}


def _dropout(config: ModelConfig) -> Dropout:
    """Residual/embedding dropout (`dropout_rate`) with the configured mask generator."""
    return Dropout(config.dropout_rate, config.dropout_rng_impl)


class Embed(nn.Module):
    """A lookup table [num_embeddings, features] with logical axes `axes`."""

    config: ModelConfig
    num_embeddings: int
    axes: tuple[str, str] = ("vocab", "embed")

    def setup(self) -> None:
        cfg = self.config
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(dense_init(cfg), self.axes),
            (self.num_embeddings, cfg.d_model),
            jnp.dtype(cfg.param_dtype),
        )

    def __call__(self, ids: Array) -> Array:
        # Unshard the table's embed dimension (in the compute dtype) before the lookup, as ZeRO-3
        # gathers a module's parameters before use: a lookup in an embed-sharded table makes
        # XLA replicate the batch-sharded activations instead.
        table = constrain(self.embedding.astype(jnp.dtype(self.config.dtype)), (self.axes[0], None))
        return jnp.take(table, ids, axis=0)


class EncoderLayer(nn.Module):
    """Pre-LN self-attention block then pre-LN feed-forward block, each with a residual."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> tuple[Array, None]:
        cfg, det = self.config, self.deterministic
        x = cotangent_barrier(x, cfg)
        h = LayerNorm(cfg, name="attention_norm")(x)
        h = Attention(cfg, cfg.num_encoder_heads, deterministic=det, name="attention")(h, h, mask)
        x = cotangent_barrier(x + _dropout(cfg)(h, deterministic=det), cfg)
        h = LayerNorm(cfg, name="mlp_norm")(x)
        h = MLP(cfg, cfg.encoder_ffn_dim, deterministic=det, name="mlp")(h)
        x = x + _dropout(cfg)(h, deterministic=det)
        return constrain(x, HIDDEN_AXES), None


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention, pre-LN cross-attention, pre-LN feed-forward."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    max_decode_length: int = 0

    @nn.compact
    def __call__(
        self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array | None
    ) -> tuple[Array, None]:
        cfg, det = self.config, self.deterministic
        attention = lambda name, cache_kv: Attention(
            cfg,
            cfg.num_decoder_heads,
            deterministic=det,
            decode=self.decode,
            cache_kv=cache_kv,
            max_decode_length=self.max_decode_length,
            name=name,
        )
        x = cotangent_barrier(x, cfg)
        h = LayerNorm(cfg, name="self_attention_norm")(x)
        h = attention("self_attention", False)(h, h, self_mask)
        x = cotangent_barrier(x + _dropout(cfg)(h, deterministic=det), cfg)
        h = LayerNorm(cfg, name="cross_attention_norm")(x)
        h = attention("cross_attention", True)(h, encoded, cross_mask)
        x = cotangent_barrier(x + _dropout(cfg)(h, deterministic=det), cfg)
        h = LayerNorm(cfg, name="mlp_norm")(x)
        h = MLP(cfg, cfg.decoder_ffn_dim, deterministic=det, name="mlp")(h)
        x = x + _dropout(cfg)(h, deterministic=det)
        return constrain(x, HIDDEN_AXES), None


def run_layers(
    layer_cls: type[nn.Module],
    config: ModelConfig,
    num_layers: int,
    x: Array,
    *broadcast_args,
    **layer_kwargs,
) -> Array:
    """Apply `num_layers` layers (scanned or unrolled, optionally rematerialised) to x.

    Must be called inside a compact method: the layers become children of the caller.
    """
    cls = layer_cls
    if config.remat_policy != "none":
        cls = nn.remat(
            cls, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers
        )
    if config.scan_layers:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(broadcast_args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(config, name="layers", **layer_kwargs)(x, *broadcast_args)
        return x
    for i in range(num_layers):
        x, _ = cls(config, name=f"layers_{i}", **layer_kwargs)(x, *broadcast_args)
    return x


class Encoder(nn.Module):
    """Token + token-type + absolute position embeddings, encoder layers, final LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        token_embeddings: Array,
        token_type_ids: Array,
        positions: Array,
        mask: Array | None,
        deterministic: bool,
    ) -> Array:
        cfg = self.config
        x = token_embeddings
        x = x + Embed(
            cfg, cfg.type_vocab_size, ("type_vocab", "embed"), name="token_type_embedder"
        )(token_type_ids)
        x = x + Embed(cfg, cfg.max_positions, ("position", "embed"), name="position_embedder")(
            positions
        )
        x = _dropout(cfg)(x, deterministic=deterministic)
        x = constrain(x, HIDDEN_AXES)
        x = run_layers(
            EncoderLayer, cfg, cfg.num_encoder_layers, x, mask, deterministic=deterministic
        )
        return LayerNorm(cfg, name="final_norm")(x)


class Decoder(nn.Module):
    """Token + (position + offset) embeddings, decoder layers, final LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        token_embeddings: Array,
        positions: Array,
        encoded: Array,
        self_mask: Array | None,
        cross_mask: Array | None,
        deterministic: bool,
        decode: bool,
        max_decode_length: int,
    ) -> Array:
        cfg = self.config
        table = Embed(
            cfg,
            cfg.max_positions + cfg.decoder_position_offset,
            ("position", "embed"),
            name="position_embedder",
        )
        x = token_embeddings + table(positions + cfg.decoder_position_offset)
        x = _dropout(cfg)(x, deterministic=deterministic)
        x = constrain(x, HIDDEN_AXES)
        x = run_layers(
            DecoderLayer,
            cfg,
            cfg.num_decoder_layers,
            x,
            encoded,
            self_mask,
            cross_mask,
            deterministic=deterministic,
            decode=decode,
            max_decode_length=max_decode_length,
        )
        return LayerNorm(cfg, name="final_norm")(x)


def project_to_vocab(hidden: Array, kernel: Array, bias: Array) -> Array:
    """Float32 logits [batch, length, vocab] = hidden . kernel + bias, accumulated in float32."""
    logits = jnp.einsum(
        "bld,dv->blv", hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32
    )
    return constrain(
        logits + bias.astype(jnp.float32),
        ("activation_batch", "activation_length", "activation_vocab"),
    )


def head_is_vocab_major(config: ModelConfig) -> bool:
    """Whether `AlexaTM.hidden_and_head` returns a [vocab, embed] kernel (tied embeddings)."""
    return config.tie_word_embeddings


def _default_positions(tokens: Array) -> Array:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class AlexaTM(nn.Module):
    """Encoder-decoder returning float32 logits [batch, decoder_len, vocab]."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg, cfg.vocab_size)
        if not cfg.share_embeddings:
            self.decoder_token_embedder = Embed(cfg, cfg.vocab_size)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head",
                nn.with_logical_partitioning(dense_init(cfg), ("embed", "vocab")),
                (cfg.d_model, cfg.vocab_size),
                jnp.dtype(cfg.param_dtype),
            )
        self.final_logits_bias = self.param(
            "final_logits_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (cfg.vocab_size,),
            jnp.dtype(cfg.param_dtype),
        )

    def _decoder_embedder(self) -> Embed:
        return self.token_embedder if self.config.share_embeddings else self.decoder_token_embedder

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        encoder_token_type_ids: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """Encoder hidden states [batch, input_len, embed]."""
        tokens = encoder_input_tokens
        positions = _default_positions(tokens) if encoder_positions is None else encoder_positions
        types = jnp.zeros_like(tokens) if encoder_token_type_ids is None else encoder_token_type_ids
        if self.config.attention_impl == "splash":
            mask = SegmentMask(encoder_segment_ids, encoder_segment_ids)
        else:
            mask = masks.encoder_self_mask(encoder_segment_ids)
        return self.encoder(self.token_embedder(tokens), types, positions, mask, deterministic)

    def decode(
        self,
        encoded: Array,
        encoder_segment_ids: Array | None,
        decoder_input_tokens: Array,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        max_decode_length: int = 0,
    ) -> Array:
        """Logits [batch, decoder_len, vocab] (float32) given encoder states.

        With `decode=True` the call extends the decoder's KV cache (collection `cache`, which must
        be mutable); `decoder_positions` must then be the absolute step indices.
        """
        hidden = self.decode_hidden(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            deterministic=deterministic,
            decode=decode,
            max_decode_length=max_decode_length,
        )
        kernel, bias = self.output_head()
        return project_to_vocab(hidden, kernel, bias)

    def decode_hidden(
        self,
        encoded: Array,
        encoder_segment_ids: Array | None,
        decoder_input_tokens: Array,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        max_decode_length: int = 0,
    ) -> Array:
        """The decoder's final hidden states [batch, decoder_len, embed]: `decode` minus the
        LM head."""
        tokens = decoder_input_tokens
        length = tokens.shape[1]
        positions = _default_positions(tokens) if decoder_positions is None else decoder_positions
        if self.config.attention_impl == "splash" and not decode:
            self_mask = SegmentMask(decoder_segment_ids, decoder_segment_ids, causal=True)
            cross = SegmentMask(decoder_segment_ids, encoder_segment_ids)
        else:
            self_mask = None if decode else masks.decoder_self_mask(decoder_segment_ids, length)
            cross = masks.cross_mask(decoder_segment_ids, encoder_segment_ids, length)
        return self.decoder(
            self._decoder_embedder()(tokens),
            positions,
            encoded,
            self_mask,
            cross,
            deterministic,
            decode,
            max_decode_length,
        )

    def output_head(self) -> tuple[Array, Array]:
        """The LM head as (kernel [embed, vocab], bias [vocab]).

        With tied embeddings the kernel is the decoder embedding transposed: a decode loop calls
        this once, outside the loop, so that every step multiplies by a [embed, vocab] matrix in
        place (on CPU the transposed product was slower when this was written:
        docs/benchmarks.md#measurements-behind-code-choices).
        """
        if self.config.tie_word_embeddings:
            kernel = constrain(self._decoder_embedder().embedding.T, ("embed", "vocab"))
        else:
            kernel = self.lm_head
        return kernel, self.final_logits_bias

    def hidden_and_head(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        encoder_token_type_ids: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[Array, Array, Array]:
        """`__call__` without the LM head: (decoder hidden states [batch, decoder_len, embed],
        head kernel, head bias [vocab]), for a loss that fuses the head
        (`alexatm_jax.training.loss.fused_head_statistics`).

        The kernel is [embed, vocab] (`lm_head`), or, with tied embeddings, the decoder
        embedding table itself, [vocab, embed] (`head_is_vocab_major(config)`): no transposed
        copy of the table, nor of its gradient, is made.
        """
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            encoder_token_type_ids,
            deterministic=deterministic,
        )
        hidden = self.decode_hidden(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            deterministic=deterministic,
        )
        if self.config.tie_word_embeddings:
            kernel = self._decoder_embedder().embedding
        else:
            kernel = self.lm_head
        return hidden, kernel, self.final_logits_bias

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        encoder_token_type_ids: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """Teacher-forced logits [batch, decoder_len, vocab] in float32."""
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids,
            encoder_positions,
            encoder_token_type_ids,
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            deterministic=deterministic,
        )
