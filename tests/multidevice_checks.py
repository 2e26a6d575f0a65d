"""Sharding and equivalence checks on 8 emulated CPU devices, run in a subprocess.

`python tests/multidevice_checks.py` sets the device count before JAX starts, runs every check
and prints one JSON object; `run_multidevice_checks()` does that once per pytest session.
The test modules assert on the numbers; this script only measures.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

NUM_DEVICES = 8
STEPS = 5


@functools.cache
def run_multidevice_checks() -> dict:
    """Run this file in a fresh interpreter with 8 CPU devices; its JSON result as a dict."""
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
        raise RuntimeError(f"multidevice_checks failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["involuntary_rematerializations"] = out.stderr.count(
        "Involuntary full rematerialization"
    )
    return result


def _main() -> dict:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from alexatm_jax.model import ModelConfig, abstract_params
    from alexatm_jax.model.params import param_logical_axes
    from alexatm_jax.partitioning import MeshConfig, Partitioner
    from alexatm_jax.training import (
        OptimizerConfig,
        create_train_state,
        make_optimizer,
        make_train_step,
        train_state_shardings,
    )
    from alexatm_jax.training.config import TrainConfig
    from alexatm_jax.training.optimizer import path_string, trainable_part

    assert len(jax.devices()) == NUM_DEVICES, jax.devices()
    cfg = ModelConfig(
        vocab_size=128,
        d_model=32,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_encoder_heads=4,
        num_decoder_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=48,
        max_positions=16,
        dropout_rate=0.0,
    )
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        lengths = rng.integers(4, 11, 8)
        weights = (np.arange(10)[None] < lengths[:, None]).astype(np.float32)
        batches.append(
            {
                "encoder_input_tokens": rng.integers(3, 128, (8, 12)).astype(np.int32),
                "decoder_input_tokens": rng.integers(3, 128, (8, 10)).astype(np.int32),
                "decoder_target_tokens": rng.integers(3, 128, (8, 10)).astype(np.int32),
                "decoder_loss_weights": weights,
                "decoder_segment_ids": weights.astype(np.int32),
                "encoder_segment_ids": np.ones((8, 12), np.int32),
            }
        )

    def train(partitioner, optimizer_config, num_steps=STEPS):
        tx = make_optimizer(optimizer_config, 50)
        state = create_train_state(cfg, tx, partitioner, jax.random.key(0))
        expected = train_state_shardings(cfg, tx, partitioner)
        step = make_train_step(
            TrainConfig(
                model_config=cfg, train_steps=50, batch_size=8, optimizer_config=optimizer_config
            ),
            partitioner,
        )
        mismatches_at_init = _mismatches(state, expected)
        losses = []
        for batch in batches[:num_steps]:
            state, metrics = step(state, partitioner.shard_batch(batch), jax.random.key(1))
            losses.append(float(metrics["loss"]))
        return state, expected, losses, mismatches_at_init

    single = Partitioner(MeshConfig(data=1), "fsdp_tensor", devices=jax.devices()[:1])
    mesh = Partitioner(MeshConfig(data=2, fsdp=2, tensor=2), "fsdp_tensor")
    adamw = OptimizerConfig()
    _, _, single_losses, _ = train(single, adamw)
    state, expected, mesh_losses, init_mismatch = train(mesh, adamw)

    params_specs = {}
    flat_params = jax.tree_util.tree_flatten_with_path(state.params)[0]
    for (path, array), logical in zip(
        flat_params,
        jax.tree.leaves(param_logical_axes(cfg), is_leaf=lambda x: isinstance(x, PartitionSpec)),
    ):
        want = NamedSharding(mesh.mesh, mesh.logical_to_mesh_spec(logical, array.shape))
        params_specs[path_string(path)] = {
            "actual": str(tuple(array.sharding.spec)),
            "equivalent": array.sharding.is_equivalent_to(want, array.ndim),
        }
    adam = state.opt_state[1][0]  # chain(clip, chain(scale_by_adam, ...)) -> ScaleByAdamState
    moments_like_params = all(
        m.sharding.is_equivalent_to(p.sharding, p.ndim) and v.sharding == m.sharding
        for m, v, p in zip(
            jax.tree.leaves(adam.mu),
            jax.tree.leaves(adam.nu),
            jax.tree.leaves(trainable_part(state.params, OptimizerConfig().buffers)),
        )
    )

    # Activation constraints are live: the logits' sharding follows the activation_* logit axes.
    batch = mesh.shard_batch(batches[0])
    with mesh.activate():
        from alexatm_jax.model import AlexaTM

        forward = jax.jit(
            lambda p, b: AlexaTM(cfg).apply(
                {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]
            )
        )
        logits_spec = forward.lower(state.params, batch).compile().output_shardings.spec

    # Adafactor: factored statistics get their own (reduced) shardings.
    adafactor = OptimizerConfig(name="adafactor", adafactor_min_dim_size_to_factor=16)
    ada_state, ada_expected, ada_losses, ada_init_mismatch = train(mesh, adafactor, 2)
    factored = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(ada_state.opt_state)[0]:
        text = jax.tree_util.keystr(path)
        if ("v_row" in text or "v_col" in text) and leaf.ndim >= 1 and leaf.size > 1:
            factored[text] = str(tuple(leaf.sharding.spec))

    table = mesh.sharding_table(abstract_params(cfg), mesh.params_shardings(cfg))
    return {
        "single_losses": single_losses,
        "mesh_losses": mesh_losses,
        "init_mismatches": init_mismatch,
        "step_mismatches": _mismatches(state, expected),
        "params": params_specs,
        "moments_like_params": moments_like_params,
        "logits_spec": [str(x) for x in logits_spec],
        "adafactor_mesh_losses": ada_losses,
        "adafactor_init_mismatches": ada_init_mismatch,
        "adafactor_step_mismatches": _mismatches(ada_state, ada_expected),
        "adafactor_factored_specs": factored,
        "data_shard_info": list(mesh.data_shard_info()),
        "sharding_table": table,
    }


def _mismatches(state, expected) -> list[str]:
    """Paths of state leaves whose actual sharding differs from the expected one."""
    import jax

    bad = []
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, array), want in zip(flat, jax.tree.leaves(expected)):
        if not array.sharding.is_equivalent_to(want, array.ndim):
            bad.append(f"{jax.tree_util.keystr(path)}: {array.sharding.spec} != {want.spec}")
    return bad


if __name__ == "__main__":
    print(json.dumps(_main()))
