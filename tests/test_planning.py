"""alexatm-plan: ahead-of-time memory / FLOPs / step-time planning.

The CLI runs in subprocesses on 8 emulated CPU devices (this pytest process already initialised
JAX with one device); the FLOP counter and the extrapolation are checked in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from alexatm_jax.cli import plan as plan_cli
from alexatm_jax.planning import (
    CompiledStep,
    extrapolate_linearly,
    extrapolation_depths,
    matmul_flops,
)

GIN_FILES = ["gin/experiments/smoke_cpu.gin", "gin/meshes/cpu_8_dp_fsdp_tp.gin"]
PEAK_TFLOPS, MFU = 0.1, 0.5


def _gin_args() -> list[str]:
    return [arg for name in GIN_FILES for arg in ("--gin_file", name)]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def plan_run(repo_root, tmp_path_factory):
    """One alexatm-plan run of the tiny smoke job on a data=2 x fsdp=2 x tensor=2 mesh:
    (completed process, the JSON report it wrote)."""
    json_path = tmp_path_factory.mktemp("plan") / "plan.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexatm_jax.cli.plan",
            *_gin_args(),
            "--devices",
            "8",
            "--peak_tflops",
            str(PEAK_TFLOPS),
            "--mfu",
            str(MFU),
            "--device_memory_gib",
            "1",
            "--json_out",
            str(json_path),
        ],
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(json_path.read_text())


def test_plan_prints_per_device_memory_and_step_time(plan_run):
    proc, _ = plan_run
    out = proc.stdout
    assert "mesh replica=1 data=2 fsdp=2 tensor=2, rules 'fsdp_tensor'" in out
    for row in (
        "parameters (float32)",
        "optimizer state",
        "compiled temporaries",
        "compiled total",
        "model FLOPs (analytic)",
        "traced matmul FLOPs",
        "XLA cost analysis, per device",
    ):
        assert re.search(rf"{re.escape(row)}\s+\S+", out), f"missing row {row!r}:\n{out}"
    assert re.search(r"compiled total\s+\d+\.\d+ [KMG]iB", out)
    assert re.search(r"fits \(\d+% of the device\)", out)
    assert re.search(r"\d+\.\d+ s/step, [\d,]+ positions/s", out)
    assert "XLA:CPU" in out
    assert "JSON report written to" in proc.stderr


def test_plan_numbers_are_consistent(plan_run):
    _, result = plan_run
    memory, flops = result["memory_per_device"], result["flops"]
    assert result["devices"] == 8
    assert result["mesh"] == {"replica": 1, "data": 2, "fsdp": 2, "tensor": 2}
    assert result["batch"]["positions_per_step"] == 4 * (64 + 64)
    expected_seconds = flops["model_flops_per_step"] / (8 * PEAK_TFLOPS * 1e12 * MFU)
    assert result["step_time"]["seconds_per_step"] == pytest.approx(expected_seconds)
    assert memory["compiled_temp_bytes"] > 0
    assert (
        memory["compiled_total_bytes"] >= memory["params_bytes"] + memory["optimizer_state_bytes"]
    )
    # No remat in the smoke model: traced matmuls are the model FLOPs plus the few matmuls the
    # analytic count leaves out.
    assert 1.0 <= flops["traced_matmul_flops_per_step"] / flops["model_flops_per_step"] < 1.2
    assert flops["xla_flops_per_device"] > 0
    assert "measured" in memory["compiled_source"]


REAL_STATE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    from alexatm_jax.cli.plan import parse_gin_config, train_config_from_gin
    from alexatm_jax.partitioning import Partitioner
    from alexatm_jax.training import create_train_state, make_optimizer

    parse_gin_config(sys.argv[1:], [], [])
    job = train_config_from_gin()
    partitioner = Partitioner(job.mesh_config, job.rules)
    optimizer = make_optimizer(job.optimizer_config, job.train_steps)
    state = create_train_state(job.model_config, optimizer, partitioner, jax.random.key(0))
    device = jax.devices()[0]

    def on_device(tree):
        return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree)
                   for shard in leaf.addressable_shards if shard.device == device)

    print(json.dumps({"params": on_device(state.params),
                      "opt_state": on_device(state.opt_state), "all": on_device(state)}))
""")


def test_planned_state_memory_matches_a_real_sharded_state(plan_run, repo_root):
    _, result = plan_run
    proc = subprocess.run(
        [sys.executable, "-c", REAL_STATE_SCRIPT, *GIN_FILES],
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout.strip().splitlines()[-1])
    memory = result["memory_per_device"]
    planned = memory["params_bytes"] + memory["optimizer_state_bytes"]
    assert planned == pytest.approx(real["params"] + real["opt_state"], rel=0.2)
    assert memory["params_bytes"] == pytest.approx(real["params"], rel=0.2)
    # The compiled step's arguments are the state plus the batch and the dropout key.
    compiled_state = memory["compiled_argument_bytes"] - memory["batch_bytes"]
    assert compiled_state == pytest.approx(real["all"], rel=0.2)


def test_plan_refuses_a_mesh_that_does_not_fit_the_devices(repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "alexatm_jax.cli.plan", *_gin_args(), "--devices", "6"],
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "needs 8 devices but 6 are available" in proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "8"], "give at least one --gin_file"),
        (["--gin_file", "x.gin", "--devices", "0"], "--devices must be >= 1"),
        (["--gin_file", "x.gin", "--devices", "8", "--mfu", "1.5"], "--mfu must be in (0, 1]"),
        (
            ["--gin_file", "x.gin", "--devices", "8", "--extrapolate_from_layers", "0"],
            "--extrapolate_from_layers must be >= 1",
        ),
        (["--gin_file", "x.gin", "--devices", "8", "--bogus"], "unrecognised argument '--bogus'"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_matmul_flops_counts_scan_bodies_times_their_length_and_remat_recompute():
    batch, width, layers = 4, 16, 5

    def loss(weights, x, remat):
        def layer(carry, w):
            return jnp.tanh(carry @ w), None

        body = jax.checkpoint(layer) if remat else layer
        carry, _ = jax.lax.scan(body, x, weights)
        return carry.sum()

    weights = jax.ShapeDtypeStruct((layers, width, width), jnp.float32)
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    one_matmul = 2 * batch * width * width
    forward = jax.make_jaxpr(lambda w, v: loss(w, v, False))(weights, x).jaxpr
    assert matmul_flops(forward) == layers * one_matmul
    # Backward: two matmuls per forward matmul; full remat repeats the forward one.
    plain = jax.make_jaxpr(jax.grad(lambda w, v: loss(w, v, False)))(weights, x).jaxpr
    assert matmul_flops(plain) == 3 * layers * one_matmul
    remat = jax.make_jaxpr(jax.grad(lambda w, v: loss(w, v, True)))(weights, x).jaxpr
    assert matmul_flops(remat) == 4 * layers * one_matmul


def test_matmul_flops_takes_the_larger_cond_branch():
    def f(pred, a):
        return jax.lax.cond(pred, lambda m: m @ m @ m, lambda m: m @ m, a)

    jaxpr = jax.make_jaxpr(f)(True, jnp.ones((8, 8))).jaxpr
    assert matmul_flops(jaxpr) == 2 * (2 * 8 * 8 * 8)


def test_extrapolation_recovers_a_linear_cost_model():
    def cost(enc: int, dec: int) -> CompiledStep:
        values = {
            field: 1000.0 * i + 7.0 * enc + 11.0 * dec
            for i, field in enumerate(CompiledStep.__dataclass_fields__)
        }
        return CompiledStep(**values)

    k = 2
    measured = {depth: cost(*depth) for depth in extrapolation_depths(k)}
    assert set(measured) == {(2, 2), (4, 2), (2, 4)}
    assert extrapolate_linearly(measured, k, (46, 32)) == cost(46, 32)
    with pytest.raises(ValueError, match="extrapolate_from_layers must be >= 1"):
        extrapolation_depths(0)


@pytest.mark.slow
def test_extrapolated_plan_is_close_to_the_measured_one(plan_run, repo_root):
    _, measured = plan_run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexatm_jax.cli.plan",
            *_gin_args(),
            "--devices",
            "8",
            "--extrapolate_from_layers",
            "1",
            "--format",
            "json",
        ],
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert "extrapolated" in result["memory_per_device"]["compiled_source"]
    for key in ("compiled_argument_bytes",):
        assert result["memory_per_device"][key] == pytest.approx(
            measured["memory_per_device"][key], rel=0.05
        )
    for key in ("xla_flops_per_device", "traced_matmul_flops_per_step"):
        assert result["flops"][key] == pytest.approx(measured["flops"][key], rel=0.1)


def test_kernel_efficiency_sensitivity_prices_only_the_uncosted_kernels():
    """The splash kernels' matmul time, which the cost model does not see, divided by each
    efficiency; the rest of the step unchanged."""
    import types

    from alexatm_jax.cli.plan_report import kernel_efficiency_sensitivity
    from alexatm_jax.planning import StepTimeEstimate

    plan = types.SimpleNamespace(model_flops_per_step=2.425e17, num_devices=128)
    estimate = StepTimeEstimate(
        seconds=6.303,
        points=(),
        microbatches=2,
        extrapolated=True,
        compile_seconds=0.0,
        uncosted_kernel_seconds=0.275,
    )
    rows = {r["kernel_efficiency"]: r for r in kernel_efficiency_sensitivity(plan, estimate, 459)}
    assert rows[1.0]["seconds_per_step"] == pytest.approx(6.303)
    assert rows[0.5]["seconds_per_step"] == pytest.approx(6.303 + 0.275)
    assert rows[1.0]["mfu"] == pytest.approx(2.425e17 / (128 * 459e12 * 6.303))
    assert [r["mfu"] for r in rows.values()] == sorted(r["mfu"] for r in rows.values())
    no_kernels = dataclasses.replace(estimate, uncosted_kernel_seconds=0.0)
    assert kernel_efficiency_sensitivity(plan, no_kernels, 459) == []
