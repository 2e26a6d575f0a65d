"""alexatm-jax: pretrain, evaluate and serve AlexaTM-style encoder-decoder LLMs in JAX."""

__version__ = "0.1.0"
