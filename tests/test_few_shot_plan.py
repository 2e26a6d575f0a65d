"""`alexatm-plan --topology` prices a training job's FewShotEval hooks: their evaluation programs
compiled by the TPU compiler on the training mesh (v5p-8, 4 compile-only chips, tiny model), the
seconds per evaluation, and their share of the wall time at the hook's period
(`alexatm_jax.eval_planning.training_eval_cost`).

Skips the compiling test where libtpu is missing or cannot load, like tests/test_eval_planning.py;
the module-scoped `planned` fixture runs the CLI once (about a minute on busy cores).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from tpu_compile_only import devices_or_skip

from alexatm_jax import tpu_topology
from alexatm_jax.cli import plan as plan_cli
from alexatm_jax.cli.plan_report import format_text
from alexatm_jax.eval_planning.programs import DECODE_STEP, PREFILL, SCORING
from alexatm_jax.eval_planning.suite_time import BatchShape
from alexatm_jax.eval_planning.training_eval_cost import (
    NOTE,
    extreme_buckets,
    few_shot_hooks,
    hook_shapes,
    hook_work,
    training_layout,
)
from alexatm_jax.eval_planning.workload import GENERATE, SCORE, typical_workload
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.partitioning import MeshConfig
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.few_shot_eval import FewShotEval

TARGET = tpu_topology.parse_tpu_target("v5p-8")
TINY = ModelConfig(num_encoder_layers=2, num_decoder_layers=2, max_positions=512)
PERIOD = 100
TINY_TRAIN_GIN = f"""
include 'gin/models/tiny.gin'
include 'gin/runs/pretrain.gin'
include 'gin/meshes/fsdp.gin'
TRAIN_STEPS = 1000
BATCH_SIZE = 8
CHECKPOINT_PERIOD = 1000
EVAL_PERIOD = {PERIOD}
train.sequence_length = {{'inputs': 32, 'targets': 32}}
train.eval_hooks = [@FewShotEval()]
FewShotEval.tasks = ['copa', 'xsum']
FewShotEval.data_dir = '/nonexistent/eval'
FewShotEval.limit = 8
FewShotEval.period = {PERIOD}
FewShotEval.max_new_tokens = 16
FewShotEval.batch_size = 6
"""


@pytest.fixture(scope="module")
def train_gin(tmp_path_factory, repo_root):
    """The tiny train gin with a FewShotEval hook; gin's configuration starts unlocked and is
    forgotten after (the CLI parses it into this process and locks it)."""
    import gin

    gin_file = tmp_path_factory.mktemp("few_shot_plan") / "tiny_few_shot.gin"
    gin_file.write_text(TINY_TRAIN_GIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo_root)
        patch.setenv("JAX_PLATFORMS", "cpu")  # the CLI sets these; restore them after
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        gin.clear_config()
        yield str(gin_file)
        gin.clear_config()


@pytest.fixture(scope="module")
def planned(train_gin, tmp_path_factory):
    """The JSON report of `alexatm-plan --topology v5p-8` on the tiny job with the hook."""
    devices_or_skip(TARGET.topology_name)
    out = tmp_path_factory.mktemp("few_shot_plan_out") / "plan.json"
    argv = ["--gin_file", train_gin, "--topology", "v5p-8", "--json_out", str(out)]
    assert plan_cli.main(argv) == 0
    return json.loads(out.read_text())


def test_the_hook_is_priced_on_the_training_mesh(planned):
    [entry] = planned["few_shot_eval"]
    assert entry["tasks"] == ["copa", "xsum"] and entry["limit"] == 8
    assert entry["period_steps"] == PERIOD and entry["workload_source"] == "paper defaults"
    # The training mesh is fsdp=4 with the 'fsdp' rules; 6 rows round up to 8 (4 batch shards).
    assert entry["layout"] == {"name": "fsdp=4", "data": 1, "fsdp": 4, "tensor": 1, "rules": "fsdp"}
    assert (entry["configured_batch_size"], entry["batch_size"]) == (6, 8)
    programs = {b["program"] for b in entry["buckets"]}
    assert programs == {PREFILL, DECODE_STEP, SCORING}
    assert all(b["cost_model_seconds"] > 0 and not b["does_not_fit"] for b in entry["buckets"])
    assert entry["fits"] and entry["resident_bytes_per_chip"] > 0
    assert [t["task"] for t in entry["tasks_detail"]] == ["copa", "xsum"]


def test_share_of_time_follows_from_the_reports_own_numbers(planned):
    [entry] = planned["few_shot_eval"]
    seconds, step = entry["seconds_per_evaluation"], entry["step_seconds"]
    assert seconds > 0 and step == planned["step_time"]["seconds_per_step"]
    assert entry["training_seconds_between_evaluations"] == pytest.approx(PERIOD * step)
    share = entry["share_of_time"]
    assert 0 < share < 1
    assert share == pytest.approx(seconds / (PERIOD * step + seconds))
    assert entry["seconds_per_evaluation_at_max_new_tokens"] >= seconds


def test_text_report_shows_the_share_and_the_note(planned):
    text = format_text(planned)
    assert "Few-shot evaluation during training ('eval': copa, xsum;" in text
    assert f"{100 * planned['few_shot_eval'][0]['share_of_time']:.2f}% of the wall time" in text
    assert NOTE in planned["notes"] and "paper's defaults" in NOTE and "TPU compiler" in NOTE


def _tiny_job(**changes) -> TrainConfig:
    hook = FewShotEval(tasks=["copa", "xsum"], data_dir="/x", limit=8, period=PERIOD)
    fields = dict(
        model_config=TINY,
        train_steps=10,
        batch_size=8,
        mesh_config=MeshConfig(data=1, fsdp=-1),
        eval_period=PERIOD,
        eval_hooks=(hook,),
    )
    return TrainConfig(**{**fields, **changes})


def _args(*extra: str):
    args, _ = plan_cli.parse_args(["--gin_file", "x.gin", "--topology", "v5p-8", *extra])
    return args


def test_the_flag_or_no_hook_plans_nothing_more():
    devices = list(range(4))  # only counted: no compiling
    assert len(plan_cli.few_shot_work(_tiny_job(), devices, _args())) == 1
    assert plan_cli.few_shot_work(_tiny_job(), devices, _args("--no_eval_hooks_cost")) == []
    assert plan_cli.few_shot_work(_tiny_job(), devices, _args("--no_step_time")) == []
    assert plan_cli.few_shot_work(_tiny_job(eval_hooks=()), devices, _args()) == []


def test_period_defaults_to_the_eval_period_and_zero_never_runs():
    hook = FewShotEval(tasks=["copa"], data_dir="/x", period=0)
    assert few_shot_hooks(_tiny_job(eval_hooks=(hook,))) == [(hook, PERIOD)]
    assert few_shot_hooks(_tiny_job(eval_hooks=(hook,), eval_period=0)) == []


def test_training_layout_merges_replica_and_data():
    job = _tiny_job(mesh_config=MeshConfig(replica=2, data=2, fsdp=2, tensor=2))
    layout = training_layout(job, list(range(16)))
    assert (layout.name, layout.data, layout.batch_shards, layout.rules) == (
        "data=4,fsdp=2,tensor=2",
        4,
        8,
        "fsdp",
    )
    custom = training_layout(dataclasses.replace(job, rules=[["heads", "tensor"]]), range(16))
    assert custom.rules == (("heads", "tensor"),)


def test_only_the_extreme_buckets_are_compiled():
    assert extreme_buckets([]) == []
    shapes = [BatchShape(64, 16), BatchShape(256, 64), BatchShape(128, 32), BatchShape(64, 16)]
    assert extreme_buckets(shapes) == [BatchShape(64, 16), BatchShape(256, 64)]
    generate = typical_workload("g", GENERATE, 4, 1, 100, 10, max_new_tokens=16)
    longer = typical_workload("g2", GENERATE, 4, 1, 300, 10, max_new_tokens=16)
    middle = typical_workload("g3", GENERATE, 4, 1, 200, 10, max_new_tokens=16)
    score = typical_workload("s", SCORE, 4, 2, 20, 20, max_new_tokens=16)
    found = hook_shapes([generate, middle, longer, score], 8, 16, 512)
    assert [(s.program, s.input_len, s.target_len, s.cache_len) for s in found] == [
        (PREFILL, 128, 0, 16),
        (DECODE_STEP, 128, 0, 16),
        (PREFILL, 512, 0, 16),
        (DECODE_STEP, 512, 0, 16),
        (SCORING, 32, 32, 0),
    ]


def test_compiles_counted_for_the_progress_bar():
    [work] = hook_work(_tiny_job(), list(range(4)))
    assert work.batch_size == 8 and len(work.shapes) == 3
    assert work.compiles(2) == 3  # 2+2 layers compile whole: one compile per bucket
    deeper = _tiny_job(model_config=TINY.replace(num_encoder_layers=4))
    [work] = hook_work(deeper, list(range(4)))
    assert work.compiles(1) == 3 + 2 + 3  # prefill, decoder step (no encoder point), scoring
