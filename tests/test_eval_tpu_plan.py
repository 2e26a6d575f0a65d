"""benchmarks/eval_tpu_plan.py: alexatm-eval's scoring and generation compiled by the TPU compiler
for v5p-8 (4 compile-only chips), with the eval gin's layout, on the tiny model.

Skips where libtpu is missing or cannot load, like tests/test_tpu_aot.py.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from alexatm_jax import tpu_topology
from alexatm_jax.partitioning import Partitioner

TINY_EVAL_GIN = """
include 'gin/models/tiny.gin'
MESH_DATA = 1
MESH_FSDP = 4
MESH_TENSOR = 1
PARTITION_RULES = 'fsdp'
BATCH_SIZE = 8
ModelConfig.dtype = 'bfloat16'
ModelConfig.param_dtype = 'bfloat16'
"""


@pytest.fixture(scope="module")
def eval_plan(repo_root):
    import sys

    problem = tpu_topology.libtpu_problem()
    if problem:
        pytest.skip(f"the TPU compiler is unavailable: {problem}")
    sys.path.insert(0, str(repo_root / "benchmarks"))
    import eval_tpu_plan

    target = tpu_topology.parse_tpu_target("v5p-8")
    tpu_topology.prepare_compile_only_environment(target)
    try:
        devices = tpu_topology.topology_devices(target)
    except RuntimeError as error:
        pytest.skip(f"the TPU compiler is unavailable: {error}")
    return eval_tpu_plan, devices


def _shard_bytes(tree) -> int:
    return sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(tree)
    )


def test_eval_layout_and_memory_on_v5p_8(eval_plan, tmp_path, repo_root, monkeypatch):
    module, devices = eval_plan
    gin_file = tmp_path / "tiny_eval.gin"
    gin_file.write_text(TINY_EVAL_GIN)
    monkeypatch.chdir(repo_root)
    config, (mesh, rules), batch = module.eval_layout_from_gin([str(gin_file)])
    assert (mesh.fsdp, mesh.tensor, rules, batch) == (4, 1, "fsdp", 8)
    assert config.param_dtype == "bfloat16" and config.d_model == 64

    partitioner = Partitioner(mesh, rules, devices=devices)
    params = module.abstract_params(config, partitioner)
    param_bytes = _shard_bytes(params)
    total_bytes = sum(leaf.size * 2 for leaf in jax.tree.leaves(params))
    assert param_bytes < total_bytes / 2  # fsdp splits most parameters 4 ways

    scoring = module.compile_scoring(config, partitioner, params, batch, 64, 32)
    batch_bytes = 2 * (batch // 4) * (64 + 32) * 4  # tokens + segments, targets + mask, int32
    arguments = scoring.memory_analysis().argument_size_in_bytes
    # TPU layouts pad small arrays to whole tiles: at least the shards, below replicated params
    assert param_bytes + batch_bytes <= arguments < total_bytes

    generation = module.compile_generation(config, partitioner, params, batch, 64, 8, 1)
    report = module.memory_report(generation, hbm_gib=95.0)
    assert report["temporaries_gib"] > 0 and report["fits"]
    assert report["total_gib"] == pytest.approx(
        report["arguments_gib"]
        + report["outputs_gib"]
        + report["temporaries_gib"]
        + report["code_gib"]
    )
