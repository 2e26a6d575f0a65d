"""Decoding under a Partitioner on 8 emulated CPU devices, run in a subprocess.

`run_multidevice_decoding()` runs this file in a fresh interpreter (the device count must be set
before JAX starts) and returns its JSON result; the test asserts on it.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

NUM_DEVICES = 8


@functools.cache
def run_multidevice_decoding() -> dict:
    """This file's JSON result, computed in a subprocess with 8 CPU devices."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
    )
    out = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode:
        raise RuntimeError(f"multidevice_decoding failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main() -> dict:
    import jax
    import numpy as np
    from tiny_config import tiny_model_config

    from alexatm_jax.decoding import DecodeOptions
    from alexatm_jax.decoding.engine import InferenceEngine
    from alexatm_jax.model import init_params
    from alexatm_jax.model.layout import scan_params
    from alexatm_jax.partitioning import MeshConfig, Partitioner

    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    config = tiny_model_config(
        num_decoder_layers=2, num_encoder_heads=4, num_decoder_heads=4, init_std=0.5
    )
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    prompts = [list(map(int, rng.integers(3, 64, n))) + [1] for n in (3, 9, 5, 12, 2, 7, 4, 10)]
    targets = [list(map(int, rng.integers(3, 64, n))) + [1] for n in (2, 5, 3, 1, 6, 4, 2, 3)]
    greedy = DecodeOptions(max_new_tokens=8)
    beams = DecodeOptions(max_new_tokens=8, num_beams=3)
    partitioner = Partitioner(MeshConfig(data=2, fsdp=2, tensor=2), "fsdp_tensor")

    def run(cfg, p, part):
        engine = InferenceEngine(cfg, p, partitioner=part, batch_size=8)
        return (
            [g.token_ids for g in engine.generate_ids(prompts, greedy)],
            [g.token_ids for g in engine.generate_ids(prompts, beams)],
            [s.score_sum for s in engine.score_ids(prompts, targets)],
            engine,
        )

    plain = run(config, params, None)
    # Sharded with scanned layers: the KV cache has a leading layers axis (batch is axis 1).
    sharded = run(config.replace(scan_layers=True), scan_params(params), partitioner)
    specs = {
        jax.tree_util.keystr(path): str(leaf.sharding.spec)
        for path, leaf in jax.tree_util.tree_leaves_with_path(sharded[3].params)
    }
    # Tied embeddings: the engine's LM head is the transposed table, built once and sharded.
    tied = config.replace(tie_word_embeddings=True, share_embeddings=True)
    tied_params = {
        k: v for k, v in params.items() if k not in ("lm_head", "decoder_token_embedder")
    }
    tied_plain = run(tied, tied_params, None)
    tied_sharded = run(tied, tied_params, partitioner)
    # Replicated parameters, batch over all 8 devices (alexatm-eval --rules data_parallel).
    replicated = run(config, params, Partitioner(MeshConfig(data=NUM_DEVICES), "data_parallel"))
    return {
        "replicated_equal": plain[:2] == replicated[:2],
        "replicated_score_max_diff": float(np.max(np.abs(np.subtract(plain[2], replicated[2])))),
        "replicated_params": all(
            leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(replicated[3].params)
        ),
        "greedy_equal": plain[0] == sharded[0],
        "beam_equal": plain[1] == sharded[1],
        "tied_greedy_and_beam_equal": tied_plain[:2] == tied_sharded[:2],
        "tied_head_spec": str(tied_sharded[3].head.kernel.sharding.spec),
        "score_max_diff": float(np.max(np.abs(np.subtract(plain[2], sharded[2])))),
        "num_greedy_tokens": sum(map(len, plain[0])),
        "tensor_sharded_params": sum("tensor" in s for s in specs.values()),
        "fsdp_sharded_params": sum("fsdp" in s for s in specs.values()),
    }


if __name__ == "__main__":
    print(json.dumps(_main()))
