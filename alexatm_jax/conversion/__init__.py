"""Conversion between HuggingFace-format AlexaTM checkpoints and ours."""
