"""Lower bounds on the seconds of evaluation's programs on a slice (the roofline), against which
the cost model's seconds are compared.

* prefill and scoring: the model FLOPs of the call (`training.flops.forward_flops_per_example`:
  2 per multiply-add of the parameter matmuls, plus attention) at the slice's peak, chips x
  the chip's dense bf16 FLOP/s. A prefill is the encoder and one decoder position.
* decode_step: the bytes one chip reads from HBM per step at the chip's HBM bandwidth: the
  decoder-step parameters it holds (decoder layers, final norm, LM head and logits bias; the
  embedding rows it gathers are negligible) and its share of the KV cache, the self-attention
  cache of cache_len positions and the cross-attention K/V of input_len positions in every
  decoder layer. A chip holds 1 / (batch shards x head shards) of the cache.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alexatm_jax.eval_planning.programs import DECODE_STEP, PREFILL, SCORING, ProgramShape
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.training.flops import forward_flops_per_example

FLOPS = "flops"
HBM = "hbm"
KINDS = {PREFILL: FLOPS, SCORING: FLOPS, DECODE_STEP: HBM}


@dataclasses.dataclass(frozen=True)
class Roofline:
    """The roofline of one layout on one slice.

    peak_flops_per_chip: dense FLOP/s; hbm_bytes_per_s: per chip; decoder_param_bytes_per_chip:
    the parameters a decoder step reads that one chip holds; kv_shards: batch shards x head
    shards, the ways the KV cache is split over the chips.
    """

    config: ModelConfig
    chips: int
    peak_flops_per_chip: float
    hbm_bytes_per_s: float
    decoder_param_bytes_per_chip: float
    kv_shards: int

    def flops(self, shape: ProgramShape) -> float:
        """Model FLOPs of one prefill or scoring call over all rows."""
        target_len = 1 if shape.program == PREFILL else shape.target_len
        return shape.batch * forward_flops_per_example(self.config, shape.input_len, target_len)

    def kv_cache_bytes(self, batch: int, input_len: int, cache_len: int) -> float:
        """Bytes of the whole KV cache: K and V of input_len + cache_len positions, d_model wide,
        per row and decoder layer, in the compute dtype."""
        itemsize = np.dtype(self.config.dtype).itemsize
        per_layer = 2 * batch * (input_len + cache_len) * self.config.d_model * itemsize
        return float(self.config.num_decoder_layers * per_layer)

    def decode_bytes_per_chip(self, shape: ProgramShape) -> float:
        """HBM bytes one chip reads in one decoder step."""
        cache = self.kv_cache_bytes(shape.batch, shape.input_len, shape.cache_len)
        return self.decoder_param_bytes_per_chip + cache / self.kv_shards

    def seconds(self, shape: ProgramShape) -> float:
        """The roofline seconds of `shape`: FLOPs at peak, or HBM bytes at bandwidth (KINDS)."""
        if KINDS[shape.program] == HBM:
            return self.decode_bytes_per_chip(shape) / self.hbm_bytes_per_s
        return self.flops(shape) / (self.chips * self.peak_flops_per_chip)
