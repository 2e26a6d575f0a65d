"""Multi-slice plans: two v5p:2x2x1 slices (2 x 4 chips) described by libtpu on this CPU, the
mesh's DCN layout (`MeshConfig.dcn_*`), and `alexatm-plan --topology ... --num_slices 2` with
its DCN term.

A machine where libtpu is missing or cannot load skips the compiling tests with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest
from test_tpu_aot import TINY_GIN, TINY_MACROS, tiny_job
from tpu_compile_only import devices_or_skip

from alexatm_jax import dcn
from alexatm_jax.cli import plan as plan_cli
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.planning import compile_train_executable, one_slice_share

TARGET = "v5p:2x2x1"


@pytest.fixture(scope="module")
def two_slices():
    """8 compile-only v5p devices in 2 slices, or a skip naming why libtpu is unusable here."""
    return devices_or_skip(TARGET, 2)


def test_libtpu_describes_two_slices_with_their_slice_index(two_slices):
    assert len(two_slices) == 8
    assert sorted(d.slice_index for d in two_slices) == [0] * 4 + [1] * 4
    assert len({d.process_index for d in two_slices}) == 2  # one 4-chip host per slice


def test_the_replica_axis_spans_the_slices_by_default(two_slices):
    mesh = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=two_slices).mesh
    assert dict(mesh.shape) == {"replica": 2, "data": 1, "fsdp": 4, "tensor": 1}
    along_replica = [d.slice_index for d in mesh.devices[:, 0, 0, 0]]
    assert along_replica == [0, 1]
    for replica in range(2):  # each replica's fsdp group is one slice: its gathers stay on ICI
        assert {d.slice_index for d in mesh.devices[replica].flat} == {replica}
    assert dcn.slices_per_axis(mesh) == {"replica": 2, "data": 1, "fsdp": 1, "tensor": 1}


def test_gin_can_put_fsdp_across_slices_instead(two_slices):
    config = MeshConfig(data=1, fsdp=-1, dcn_replica=1, dcn_fsdp=2)
    mesh = Partitioner(config, "fsdp", devices=two_slices).mesh
    assert dict(mesh.shape) == {"replica": 1, "data": 1, "fsdp": 8, "tensor": 1}
    traffic = dcn.gradient_allreduce_traffic(mesh, 10**6, 200.0)
    assert traffic.unpriced_axes == ("fsdp",)
    assert traffic.bytes_sent_per_host == 0  # no replicated parameters across slices


def test_a_dcn_layout_that_does_not_divide_the_slices_is_refused(two_slices):
    with pytest.raises(ValueError, match="DCN layout.*dcn_fsdp=3.*does not divide the 2"):
        Partitioner(MeshConfig(data=1, fsdp=-1, dcn_fsdp=3), "fsdp", devices=two_slices)


def test_gradient_allreduce_bytes_per_host():
    """2 (N-1)/N of each host's float32 gradient shard, at the host's Gbit/s."""
    traffic = dcn.DcnTraffic(
        num_slices=4,
        num_hosts=128,
        slices_per_axis={"replica": 4, "data": 1, "fsdp": 1, "tensor": 1},
        bytes_sent_per_host=2 * 3 / 4 * 4 * 20e9 / 32,
        gbps_per_host=200.0,
    )
    assert traffic.seconds == pytest.approx(3.75e9 * 8 / 200e9)  # 0.15 s
    # the last of 2 microbatches of a 0.3 s step: 0.1 s of backward pass, half of it overlapped
    assert traffic.exposed_seconds(0.3, microbatches=2, overlap=0.5) == pytest.approx(0.10)
    assert traffic.exposed_seconds(3.0, microbatches=2, overlap=0.5) == 0  # all hidden
    assert traffic.exposed_seconds(3.0, microbatches=2, overlap=0.0) == traffic.seconds


def test_train_step_compiles_for_two_slices(two_slices):
    """The TPU compiler partitions the tiny step over both slices; the step-time estimate
    times it on slice 0 alone (the cost model gives the cross-slice step a negative time)."""
    partitioner = Partitioner(MeshConfig(data=1, fsdp=-1), "fsdp", devices=two_slices)
    job = dataclasses.replace(tiny_job(), batch_size=16)
    compiled, _, _ = compile_train_executable(job, partitioner)
    assert compiled.memory_analysis().temp_size_in_bytes > 0
    state_sharding = jax.tree.leaves(compiled.input_shardings[0][0])[0]
    assert {d.slice_index for d in state_sharding.device_set} == {0, 1}
    _, devices, slices = one_slice_share(job, two_slices)
    assert slices == 2 and {d.slice_index for d in devices} == {0}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--topology", "v5p-8", "--num_slices", "0"], "--num_slices must be >= 1, got 0"),
        (["--devices", "8", "--num_slices", "2"], "--num_slices needs a TPU --topology"),
        (["--topology", "v4-8", "--num_slices", "2"], "give --dcn_gbps_per_host"),
        (["--topology", "v5p-8", "--dcn_overlap", "1.5"], "--dcn_overlap must be in [0, 1]"),
        (["--topology", "v5p-8", "--dcn_gbps_per_host", "0"], "--dcn_gbps_per_host must be > 0"),
    ],
)
def test_bad_multislice_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.parse_args(["--gin_file", "x.gin", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # two TPU compiles in a fresh process: about 75 s on 2 shared cores
def test_plan_cli_for_two_slices_reports_memory_step_time_and_the_dcn_term(
    two_slices, repo_root, tmp_path
):
    """The tiny job on 2 x v5p:2x2x1 with twice test_tpu_aot's batch: each chip holds the
    same parameter shard as on one slice, and the step pays a gradient all-reduce over DCN."""
    out = tmp_path / "plan.json"
    macros = [m for m in TINY_MACROS if not m.startswith("--gin.BATCH_SIZE")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexatm_jax.cli.plan",
            *[arg for name in TINY_GIN for arg in ("--gin_file", name)],
            *macros,
            "--gin.BATCH_SIZE=16",
            "--topology",
            TARGET,
            "--num_slices",
            "2",
            "--json_out",
            str(out),
        ],
        cwd=repo_root,
        env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traffic between slices (DCN): 2 slices" in proc.stdout
    result = json.loads(out.read_text())
    assert result["devices"] == 2 * 4
    assert result["mesh"] == {"replica": 2, "data": 1, "fsdp": 4, "tensor": 1}
    memory = result["memory_per_device"]
    assert memory["fits"] is True and memory["compiled_total_bytes"] > 0
    float32_params = 4 * result["model"]["num_params"]
    # one slice's fsdp shard (4 ways), not split across the slices (8 ways) nor replicated
    assert float32_params / 8 < memory["params_bytes"] < float32_params / 2
    step = result["step_time"]
    assert step["seconds_per_step"] > 0 and 0 < step["implied_mfu"] < 1
    assert "one of the 2 slices" in step["method"]
    term = result["dcn"]
    assert term["num_slices"] == 2 and term["slices_per_axis"]["replica"] == 2
    assert term["bytes_sent_per_host_per_step"] > 0 and term["seconds_per_step"] > 0
    assert term["gbps_per_host"] == 200.0  # v5p: 50 Gbit/s per chip x 4 chips per host
    assert term["step_seconds_without_dcn"] == step["seconds_per_step"]
    assert term["step_seconds_with_dcn"] >= term["step_seconds_without_dcn"]
