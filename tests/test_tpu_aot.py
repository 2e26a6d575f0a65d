"""The TPU compiler in the loop: the tiny model's train and decode steps compiled by libtpu for a
v5p-8 slice (v5p:2x2x1, 4 chips) on this CPU, and `alexatm-plan --topology`.

A machine where libtpu is missing or cannot load skips the compiling tests with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from tpu_compile_only import devices_or_skip

from alexatm_jax import tpu_topology
from alexatm_jax.cli import plan as plan_cli
from alexatm_jax.decoding import model_steps
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import init_params
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.planning import (
    DoesNotFit,
    compile_train_executable,
    compile_train_step,
    timing_config,
    timing_depths,
)
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.optimizer import OptimizerConfig, make_optimizer
from alexatm_jax.training.state import train_state_shardings

TARGET = "v5p:2x2x1"
TINY = ModelConfig(
    vocab_size=512,
    d_model=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_encoder_heads=4,
    num_decoder_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_positions=256,
    dtype="bfloat16",
    scan_layers=True,
    remat_policy="full",
)
TINY_GIN = ["gin/models/tiny.gin", "gin/runs/pretrain.gin", "gin/meshes/fsdp.gin"]
TINY_MACROS = [
    "--gin.MODEL_DIR='/tmp/unused'",
    "--gin.TRAIN_STEPS=10",
    "--gin.BATCH_SIZE=8",
    "--gin.CHECKPOINT_PERIOD=10",
    "--gin.EVAL_PERIOD=0",
    "--gin.train.sequence_length={'inputs': 64, 'targets': 64}",
]


@pytest.fixture(scope="module")
def devices():
    """The 4 compile-only v5p devices, or a skip naming why libtpu is unusable here."""
    return devices_or_skip(TARGET)


def tiny_job(config: ModelConfig = TINY, length: int = 64) -> TrainConfig:
    return TrainConfig(
        model_config=config,
        mesh_config=MeshConfig(data=1, fsdp=-1),
        rules="fsdp",
        batch_size=8,
        sequence_length={"inputs": length, "targets": length},
        optimizer_config=OptimizerConfig(),
        train_steps=10,
    )


@pytest.fixture(scope="module")
def compiled_train_step(devices):
    partitioner = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=devices)
    compiled, _, _ = compile_train_executable(tiny_job(), partitioner)
    return partitioner, compiled


def test_train_step_compiles_for_v5p_with_memory_analysis_and_cost_model(compiled_train_step):
    _, compiled = compiled_train_step
    memory = compiled.memory_analysis()
    assert memory.argument_size_in_bytes > 0
    assert memory.temp_size_in_bytes > 0
    assert memory.generated_code_size_in_bytes > 0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["optimal_seconds"] > 0


def test_compiled_state_has_the_partitioner_shardings(compiled_train_step):
    partitioner, compiled = compiled_train_step
    state_shardings = compiled.input_shardings[0][0]
    expected = train_state_shardings(TINY, make_optimizer(OptimizerConfig(), 10), partitioner)
    compiled_leaves = jax.tree.leaves(state_shardings)
    expected_leaves = jax.tree.leaves(expected, is_leaf=lambda x: isinstance(x, NamedSharding))
    assert len(compiled_leaves) == len(expected_leaves)
    shapes = [leaf.shape for leaf in jax.tree.leaves(compiled.in_avals[0][0])]
    for got, want, shape in zip(compiled_leaves, expected_leaves, shapes):
        assert got.is_equivalent_to(want, len(shape)), (shape, got, want)
    sharded = [w for w in expected_leaves if any(axis is not None for axis in w.spec)]
    assert len(sharded) > len(expected_leaves) // 2  # fsdp splits most of the state 4 ways
    assert all(d.platform == "tpu" for d in compiled_leaves[0].device_set)


def test_decode_step_compiles_for_v5p(devices):
    partitioner = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=devices)
    config, batch, max_len = TINY.replace(remat_policy="none"), 8, 32
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.eval_shape(lambda: init_params(config, jax.random.key(0))),
        partitioner.params_shardings(config),
    )
    rows = partitioner.batch_sharding(2)
    tokens = jax.ShapeDtypeStruct((batch, 16), jnp.int32, sharding=rows)
    encoded = jax.ShapeDtypeStruct(
        (batch, 16, config.d_model), jnp.bfloat16, sharding=partitioner.batch_sharding(3)
    )
    ids = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=partitioner.batch_sharding(1))
    step = jax.ShapeDtypeStruct((), jnp.int32)
    head = jax.eval_shape(functools.partial(model_steps.output_head, config), params)
    with partitioner.activate():
        _, cache = jax.eval_shape(
            functools.partial(model_steps.decoder_step, config, max_decode_length=max_len),
            params,
            head,
            None,
            encoded,
            tokens,
            ids,
            step,
        )
        decode = jax.jit(
            functools.partial(model_steps.decoder_step, config, max_decode_length=max_len)
        )
        compiled = decode.trace(params, head, cache, encoded, tokens, ids, step).lower().compile()
    assert compiled.memory_analysis().temp_size_in_bytes >= 0
    assert compiled.memory_analysis().argument_size_in_bytes > 0


def test_splash_attention_train_step_compiles_for_v5p(devices):
    """Mosaic compiles the splash kernels (forward and backward) inside the sharded step."""
    partitioner = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=devices)
    config = TINY.replace(
        attention_impl="splash", scan_layers=False, num_encoder_layers=1, num_decoder_layers=1
    )
    compiled, _, _ = compile_train_executable(tiny_job(config, length=128), partitioner)
    assert "tpu_custom_call" in compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_plan_cli_with_topology_reports_tpu_memory_and_cost_model_time(
    devices, repo_root, tmp_path
):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexatm_jax.cli.plan",
            *[arg for name in TINY_GIN for arg in ("--gin_file", name)],
            *TINY_MACROS,
            "--topology",
            "v5p-8",
            "--json_out",
            str(out),
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TPU compiler (libtpu)" in proc.stdout
    assert "fits (0% of the device)" in proc.stdout
    assert "implied MFU" in proc.stdout
    assert "TPU_WORKER_HOSTNAMES" not in proc.stderr
    result = json.loads(out.read_text())
    assert result["target"]["cloud_type"] == "v5p-8" and result["devices"] == 4
    assert result["memory_per_device"]["fits"] is True
    step = result["step_time"]
    assert step["seconds_per_step"] > 0 and 0 < step["implied_mfu"] < 1
    assert step["seconds_per_step"] == pytest.approx(step["timing_points"][0]["optimal_seconds"])
    assert result["dcn"]["num_slices"] == 1 and result["dcn"]["seconds_per_step"] == 0
    assert result["dcn"]["step_seconds_with_dcn"] == step["seconds_per_step"]
    assert "few_shot_eval" not in result  # no FewShotEval hook: nothing more is planned


def test_a_step_too_big_for_hbm_is_refused_by_the_tpu_compiler(devices):
    """2048 sequences of 2048 tokens per chip: the float32 logits alone exceed 95 GiB."""
    partitioner = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=devices)
    config = TINY.replace(
        vocab_size=4096,
        max_positions=2048,
        num_encoder_layers=1,
        num_decoder_layers=1,
        scan_layers=False,
    )
    job = dataclasses.replace(tiny_job(config, length=2048), batch_size=4 * 2048)
    with pytest.raises(DoesNotFit, match="exceeds available HBM|Ran out of memory"):
        compile_train_step(job, partitioner)


def test_a_non_positive_cost_model_time_is_named_and_the_memory_plan_kept(monkeypatch, capsys):
    """The TPU cost model returns negative optimal_seconds for some layouts (measured: the 20B
    fine-tuning step on v4-512 gave -49.93 s at 1+1 layers): no step time, one warning, and the
    plan's memory is still reported (exit 0)."""
    from alexatm_jax import planning

    def negative(job, partitioner, progress=None):
        return planning.CompiledStep(1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -49.93), 0.0

    monkeypatch.setattr(planning, "compile_train_step", negative)
    with pytest.raises(planning.StepTimeUnavailable, match=r"non-positive step times .*-49\.93 s"):
        planning.estimate_step_time(tiny_job(), jax.devices()[:1], layers=1)
    args, _ = plan_cli.parse_args(["--gin_file", "x.gin", "--devices", "1", "--peak_tflops", "459"])
    args.target = type("Target", (), {"has_cost_model": True})()
    monkeypatch.setattr(planning, "make_plan", lambda job, **kwargs: "the memory plan")
    plan, estimate, few_shot = plan_cli.run_plan(tiny_job(), jax.devices()[:1], args)
    assert (plan, estimate, few_shot) == ("the memory plan", None, [])
    assert "alexatm-plan: warning: no step time: the TPU cost model" in capsys.readouterr().err


def test_timing_job_is_one_unscanned_microbatch():
    job = dataclasses.replace(
        tiny_job(TINY.replace(num_encoder_layers=46, num_decoder_layers=32)),
        batch_size=2048,
        grad_accum_steps=4,
    )
    micro = timing_config(job)
    assert (micro.batch_size, micro.grad_accum_steps) == (512, 1)
    assert not micro.model_config.scan_layers and micro.depths == (46, 32)
    assert timing_depths(job, 2) == ((2, 2), (4, 2), (2, 4))
    assert timing_depths(tiny_job(), 2) == ((2, 2),)  # shallow: compiled whole


@pytest.mark.parametrize(
    "name, topology, cloud",
    [
        ("v5p-256", "v5p:4x4x8", "v5p-256"),
        ("v4-512", "v4:4x8x8", "v4-512"),
        ("v4-8", "v4:2x2x1", "v4-8"),
        ("v5litepod-16", "v5e:4x4", "v5litepod-16"),
        ("v6e-8", "v6e:2x4", "v6e-8"),
        ("v5p:2x2x1", "v5p:2x2x1", "v5p-8"),
    ],
)
def test_cloud_tpu_names_map_to_topologies(name, topology, cloud):
    target = tpu_topology.parse_tpu_target(name)
    assert (target.topology_name, target.cloud_type) == (topology, cloud)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--topology", "v9-8"], "unknown TPU slice 'v9-8'"),
        (["--topology", "v5p-12"], "power-of-two number of chips"),
        (["--topology", "v5p-8", "--mfu", "0.5"], "drop --mfu"),
        (["--topology", "v5p-8", "--devices", "4"], "not allowed with argument"),
    ],
)
def test_bad_topology_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.parse_args(["--gin_file", "x.gin", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_topology_without_libtpu_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(
        tpu_topology,
        "libtpu_problem",
        lambda: f"libtpu is not installed: {tpu_topology.INSTALL_HINT}",
    )
    assert plan_cli.main(["--gin_file", "x.gin", "--topology", "v5p-8"]) == 2
    assert "pip install -e '.[tpu-aot]'" in capsys.readouterr().err
