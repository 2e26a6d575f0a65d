"""Model FLOPs of one training step of the encoder-decoder, and model FLOPs utilisation (MFU).

Counted per example (S = input length, T = target length, d = d_model, f = FFN width,
V = vocabulary; a multiply-add is 2 FLOPs; embedding lookups, LayerNorm, softmax, GELU and the
optimizer are not counted):

  encoder layer   8·S·d²  (q, k, v, out)  + 4·S·f_e·d (FFN)  + 4·S²·d (q·kᵀ and p·v, bidirectional)
  decoder layer   8·T·d²  (self q, k, v, out) + 4·T·d² (cross q, out) + 4·S·d² (cross k, v of
                  the encoder states) + 4·T·f_d·d (FFN) + 2·T·(T+1)·d (causal self-attention:
                  only the T(T+1)/2 visible pairs) + 4·T·S·d (cross-attention)
  LM head         2·T·d·V

Training = 3 × forward (the backward pass does two matmuls per forward matmul). Activation
recomputation (remat) is not counted: MFU measures useful model FLOPs, not hardware FLOPs.
"""

from __future__ import annotations

from alexatm_jax.model.config import ModelConfig

# Dense peak FLOP/s per chip. GPU float32 entries are TF32 tensor-core rates (XLA's default
# matmul precision for f32 on Ampere and later); TPUs run f32 matmuls as bf16 passes by default.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float32": 494.5e12},
    "H200": {"bfloat16": 989e12, "float32": 494.5e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
}


def forward_flops_per_example(config: ModelConfig, input_length: int, target_length: int) -> float:
    """Model FLOPs of one forward pass over one [input_length] -> [target_length] example."""
    d, s, t = config.d_model, input_length, target_length
    encoder_layer = 8 * s * d * d + 4 * s * config.encoder_ffn_dim * d + 4 * s * s * d
    decoder_layer = (
        8 * t * d * d
        + 4 * t * d * d
        + 4 * s * d * d
        + 4 * t * config.decoder_ffn_dim * d
        + 2 * t * (t + 1) * d
        + 4 * t * s * d
    )
    head = 2 * t * d * config.vocab_size
    return float(
        config.num_encoder_layers * encoder_layer + config.num_decoder_layers * decoder_layer + head
    )


def train_flops_per_step(
    config: ModelConfig, global_batch: int, input_length: int, target_length: int
) -> float:
    """Model FLOPs of one training step (forward + backward) over the global batch."""
    return 3.0 * global_batch * forward_flops_per_example(config, input_length, target_length)


def peak_flops_per_device(
    device_kind: str, dtype: str = "bfloat16", cpu_peak_flops: float | None = None
) -> float | None:
    """Peak dense FLOP/s of one device of `device_kind` (jax's `device.device_kind`).

    CPUs have no table entry: pass `cpu_peak_flops` (e.g. cores x GHz x FLOPs/cycle) for them.
    Returns None when the chip is unknown and no CPU value applies.
    """
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_FLOPS[name][dtype]
    if cpu_peak_flops is not None and "cpu" in device_kind.lower():
        return cpu_peak_flops
    return None


def mfu(
    flops_per_step: float, step_time_s: float, num_devices: int, peak_flops_per_device: float
) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the devices' peak."""
    if step_time_s <= 0 or num_devices < 1 or peak_flops_per_device <= 0:
        raise ValueError("step_time_s, num_devices and peak_flops_per_device must be positive")
    return flops_per_step / step_time_s / (num_devices * peak_flops_per_device)
