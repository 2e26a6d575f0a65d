"""XLA:GPU ahead of time: the tiny train step compiled for 8 compile-only H100s on this CPU.
Skips unless the CUDA plugin (the `gpu-aot` extra) is installed; `make test` does not install it."""

from __future__ import annotations

import pytest

from alexatm_jax import gpu_topology
from alexatm_jax.cli import plan as plan_cli


def test_h100_names_parse():
    target = gpu_topology.parse_gpu_target("h100-16x8")
    assert (target.nodes, target.gpus_per_node, target.num_devices) == (16, 8, 128)
    assert gpu_topology.parse_gpu_target("v5p-8") is None
    with pytest.raises(ValueError, match="1 to 8 GPUs per node"):
        gpu_topology.parse_gpu_target("h100-2x16")


def test_h100_topology_without_the_plugin_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(
        gpu_topology,
        "cuda_plugin_problem",
        lambda: f"the CUDA plugin is not installed: {gpu_topology.INSTALL_HINT}",
    )
    assert plan_cli.main(["--gin_file", "x.gin", "--topology", "h100-1x8"]) == 2
    assert "pip install -e '.[gpu-aot]'" in capsys.readouterr().err


def test_train_step_compiles_for_eight_h100s():
    problem = gpu_topology.cuda_plugin_problem()
    if problem:
        pytest.skip(problem)
    from alexatm_jax.model.config import ModelConfig
    from alexatm_jax.partitioning import MeshConfig, Partitioner
    from alexatm_jax.planning import compile_train_step
    from alexatm_jax.training.config import TrainConfig
    from alexatm_jax.training.optimizer import OptimizerConfig

    config = ModelConfig(
        vocab_size=512,
        d_model=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_encoder_heads=4,
        num_decoder_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        dtype="bfloat16",
        scan_layers=True,
    )
    job = TrainConfig(
        model_config=config,
        mesh_config=MeshConfig(data=1, fsdp=-1),
        rules="fsdp",
        batch_size=8,
        sequence_length={"inputs": 64, "targets": 64},
        optimizer_config=OptimizerConfig(),
        train_steps=10,
    )
    devices = gpu_topology.gpu_devices(gpu_topology.parse_gpu_target("h100-1x8"))
    partitioner = Partitioner(job.mesh_config, job.rules, devices=devices)
    step, _ = compile_train_step(job, partitioner)
    assert step.temp_bytes > 0 and step.argument_bytes > 0
