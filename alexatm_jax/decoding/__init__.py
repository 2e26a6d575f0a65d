"""Decoding: greedy / sampling / beam search over the cached decoder, and teacher-forced scoring."""

from alexatm_jax.decoding.beam_search import beam_search
from alexatm_jax.decoding.options import DecodeOptions, length_normalizer, split_options
from alexatm_jax.decoding.sampling import SearchOutput, greedy_or_sample
from alexatm_jax.decoding.scoring import target_log_probs

__all__ = [
    "DecodeOptions",
    "SearchOutput",
    "beam_search",
    "greedy_or_sample",
    "length_normalizer",
    "split_options",
    "target_log_probs",
]
