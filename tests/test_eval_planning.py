"""alexatm_jax.eval_planning and `alexatm-plan --eval`: evaluation's prefill, decoder step and
scoring compiled by the TPU compiler for v5p-8 (v5p:2x2x1, 4 compile-only chips) on the tiny
model, per layout and length bucket: cost-model seconds, memory per chip, the roofline, and
the CLI's arguments, exit codes and JSON.

Skips the compiling tests where libtpu is missing or cannot load, like tests/test_tpu_aot.py.
The module-scoped `plans` fixture compiles once for the tests that read its results.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from tpu_compile_only import devices_or_skip

from alexatm_jax import tpu_topology
from alexatm_jax.cli import plan as plan_cli
from alexatm_jax.cli.plan_eval_report import format_eval_text
from alexatm_jax.eval_planning.compiled_programs import (
    abstract_params,
    decoder_step_param_bytes_per_chip,
    layout_partitioner,
)
from alexatm_jax.eval_planning.layout_plan import (
    MEMORY_FULL_DEPTH,
    BucketPlan,
    LayoutPlan,
    plan_layout,
    program_depths,
)
from alexatm_jax.eval_planning.layouts import candidate_layouts, layout_problem, parse_layout
from alexatm_jax.eval_planning.programs import (
    DECODE_STEP,
    PREFILL,
    SCORING,
    ProgramShape,
    interpolate,
)
from alexatm_jax.eval_planning.roofline import Roofline
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.planning import CompiledStep

TARGET = tpu_topology.parse_tpu_target("v5p-8")
TINY = ModelConfig(
    vocab_size=4000,
    d_model=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_encoder_heads=4,
    num_decoder_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_positions=512,
    dtype="bfloat16",
    param_dtype="bfloat16",
    dropout_rate=0.0,
)
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
BATCH = 8
CACHE = 16


def _shapes(*buckets: tuple[int, int]) -> list[ProgramShape]:
    return (
        [ProgramShape(PREFILL, BATCH, s, cache_len=CACHE) for s, _ in buckets]
        + [ProgramShape(DECODE_STEP, BATCH, s, cache_len=CACHE) for s, _ in buckets]
        + [ProgramShape(SCORING, BATCH, s, target_len=t) for s, t in buckets]
    )


@pytest.fixture(scope="module")
def devices():
    """The 4 compile-only v5p devices, or a skip naming why libtpu is unusable here."""
    return devices_or_skip(TARGET.topology_name)


@pytest.fixture(scope="module")
def plans(devices):
    """LayoutPlans of data=4 (two buckets), fsdp=4 and data=2,tensor=2 (one bucket each)."""
    buckets = {"data=4": [(64, 32), (256, 64)], "fsdp=4": [(64, 32)], "data=2,tensor=2": [(64, 32)]}
    return {
        name: plan_layout(TINY, parse_layout(name), devices, TARGET, _shapes(*lengths))
        for name, lengths in buckets.items()
    }


# ----------------------------------------------------------------- layouts (no compiling)


def test_layouts_parse_and_pick_their_rules():
    assert parse_layout("data=4") == parse_layout("data=4,fsdp=1")
    assert (parse_layout("data=4").rules, parse_layout("fsdp=4").rules) == ("data_parallel", "fsdp")
    mixed = parse_layout("tensor=2, data=2")
    assert (mixed.name, mixed.rules, mixed.batch_shards) == ("data=2,tensor=2", "fsdp_tensor", 2)
    assert mixed.eval_flags == "--fsdp 1 --tensor 2 --rules fsdp_tensor"
    for bad in ("data=four", "pipeline=4", "data=0", "data=2;tensor=2", ""):
        with pytest.raises(ValueError, match="axis=size"):
            parse_layout(bad)
    names = [layout.name for layout in candidate_layouts(4)]
    assert names == [
        "data=4",
        "fsdp=4",
        "tensor=4",
        "data=2,fsdp=2",
        "data=2,tensor=2",
        "fsdp=2,tensor=2",
    ]
    assert "spans 2 chips" in layout_problem(parse_layout("data=2"), 4, TINY, 8)
    assert "does not divide the heads" in layout_problem(parse_layout("tensor=8"), 8, TINY, 8)
    assert "multiple of 4" in layout_problem(parse_layout("fsdp=4"), 4, TINY, 6)
    assert layout_problem(parse_layout("tensor=4"), 4, TINY, 6) is None  # rows not split


def test_interpolation_between_and_beyond_the_points():
    points = [(1.0, 10.0), (3.0, 20.0)]
    assert interpolate(points, 2.0) == (15.0, False)
    assert interpolate(points, 5.0) == (30.0, True)
    assert interpolate(points, 0.0) == (5.0, True)
    assert interpolate([(2.0, 4.0)], 3.0) == (6.0, True)
    assert interpolate([(1.0, 1.0), (2.0, 10.0)], 0.5) == (0.5, True)  # never 0 or below


def test_non_positive_cost_model_times_give_no_time_and_no_suite_estimate():
    # The TPU cost model returns negative optimal_seconds where it cannot price a mesh's
    # collectives (seen on v4-8 and v4-512): such a layout keeps its memory but has no time.
    from alexatm_jax.cli.plan_eval import suite_inputs

    step = CompiledStep(1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, optimal_seconds=-95.9)
    shape = ProgramShape(PREFILL, 8, 128, cache_len=63)
    layout = parse_layout("data=2,tensor=2")
    bucket = BucketPlan(shape, step, step, (((1, 1), -95.9), ((2, 1), -120.0)), True, 0.01)
    plan = LayoutPlan(layout, 0, 2.0**35, (bucket,))
    assert not bucket.timed and math.isnan(bucket.seconds)
    assert plan.fits and not plan.timed
    assert suite_inputs([plan]) == ({}, {"data=2,tensor=2": True})
    priced = dataclasses.replace(bucket, points=(((1, 1), 0.5), ((2, 1), 0.7)))
    assert priced.timed and dataclasses.replace(plan, buckets=(priced,)).timed


def test_roofline_equals_a_hand_computation():
    d, f, vocab, layers, batch, inputs, cache = 64, 128, 4000, 2, 8, 64, 16
    attention, mlp, norms = 4 * (d * d + d), d * f + f + f * d + d, 3 * 2 * d
    decoder_params = layers * (2 * attention + mlp + norms) + 2 * d + d * vocab + vocab
    roofline = Roofline(TINY, 4, 459e12, 2765e9, 2.0 * decoder_params, kv_shards=4)
    kv_bytes = layers * 2 * batch * (inputs + cache) * d * 2  # K and V, bf16
    step = ProgramShape(DECODE_STEP, batch, inputs, cache_len=cache)
    assert roofline.decode_bytes_per_chip(step) == 2.0 * decoder_params + kv_bytes / 4
    assert roofline.seconds(step) == pytest.approx((2.0 * decoder_params + kv_bytes / 4) / 2765e9)
    encoder_layer = 8 * inputs * d * d + 4 * inputs * f * d + 4 * inputs * inputs * d
    one_position = 8 * d * d + 4 * d * d + 4 * inputs * d * d + 4 * f * d + 2 * 2 * d
    decoder_layer = one_position + 4 * inputs * d
    prefill_flops = batch * (layers * (encoder_layer + decoder_layer) + 2 * d * vocab)
    prefill = ProgramShape(PREFILL, batch, inputs, cache_len=cache)
    assert roofline.flops(prefill) == prefill_flops
    assert roofline.seconds(prefill) == pytest.approx(prefill_flops / (4 * 459e12))


# ----------------------------------------------------------------- compiled by libtpu


def test_decoder_step_parameters_per_chip_by_layout(devices):
    d, f, vocab, layers = 64, 128, 4000, 2
    attention, mlp, norms = 4 * (d * d + d), d * f + f + f * d + d, 3 * 2 * d
    decoder_params = layers * (2 * attention + mlp + norms) + 2 * d + d * vocab + vocab
    replicated = layout_partitioner(parse_layout("data=4"), devices)
    assert decoder_step_param_bytes_per_chip(TINY, replicated) == 2 * decoder_params
    for name in ("fsdp=4", "tensor=4"):
        split = layout_partitioner(parse_layout(name), devices)
        assert decoder_step_param_bytes_per_chip(TINY, split) < 2 * decoder_params / 2


def test_programs_compile_for_each_layout(plans):
    for name, plan in plans.items():
        assert plan.fits and plan.skipped is None, name
        assert plan.params_bytes_per_chip > 0
        for bucket in plan.buckets:
            where = f"{name} {bucket.shape}"
            assert bucket.seconds > 0 and bucket.roofline_seconds > 0, where
            assert bucket.seconds > bucket.roofline_seconds, where  # the roofline is a bound
            assert not bucket.extrapolated and bucket.points == (((2, 2), bucket.seconds),)
            memory = bucket.memory
            assert memory.argument_bytes >= plan.params_bytes_per_chip, where
            assert 0 < memory.total_bytes <= plan.hbm_bytes, where
    step = next(b for b in plans["data=4"].buckets if b.shape.program == DECODE_STEP)
    assert step.memory.alias_bytes > 0  # the donated cache is updated in place
    assert plans["data=2,tensor=2"].roofline.kv_shards == 4


def test_parameters_are_sharded_as_the_layout_says(plans, devices):
    total = 2 * sum(
        math.prod(leaf.shape)
        for leaf in jax.tree.leaves(
            abstract_params(TINY, layout_partitioner(parse_layout("data=4"), devices))
        )
    )
    assert plans["data=4"].params_bytes_per_chip == total
    assert plans["fsdp=4"].params_bytes_per_chip < total / 2  # fsdp splits most of them 4 ways
    scoring = next(b for b in plans["fsdp=4"].buckets if b.shape.program == SCORING)
    batch_bytes = 2 * (BATCH // 4) * (64 + 32) * 4  # tokens + segments, targets + mask, int32
    # TPU layouts pad small arrays to whole tiles: at least the shards, below replicated params
    assert plans["fsdp=4"].params_bytes_per_chip + batch_bytes <= scoring.memory.argument_bytes
    assert scoring.memory.argument_bytes < total


def test_times_grow_with_input_length_and_batch(plans):
    times = plans["data=4"].programs
    assert times.prefill(BATCH, 64) < times.prefill(BATCH, 128) < times.prefill(BATCH, 256)
    assert times.decode_step(BATCH, 64, CACHE) < times.decode_step(BATCH, 256, CACHE)
    assert (
        times.scoring(BATCH, 64, 32) < times.scoring(BATCH, 128, 48) < times.scoring(BATCH, 256, 64)
    )
    within = times.estimate(ProgramShape(PREFILL, BATCH, 128))
    beyond = times.estimate(ProgramShape(PREFILL, BATCH, 512))
    assert not within.extrapolated and beyond.extrapolated and beyond.seconds > within.seconds
    doubled = times.estimate(ProgramShape(SCORING, 2 * BATCH, 64, target_len=32))
    assert doubled.batch_scaled and doubled.seconds == pytest.approx(
        2 * times.scoring(BATCH, 64, 32)
    )
    compiled = {b.shape: b.seconds for b in plans["data=4"].buckets}
    for shape, seconds in compiled.items():  # the compiled buckets come back exactly
        assert times.estimate(shape).seconds == pytest.approx(seconds)
    with pytest.raises(ValueError, match="no compiled"):
        plans["fsdp=4"].programs.estimate(ProgramShape("beam_search", BATCH, 64))


def test_decode_step_extrapolated_from_shallow_compiles(devices, plans):
    assert program_depths(DECODE_STEP, (2, 2), 1) == ((1, 1), (1, 2))
    assert program_depths(PREFILL, (46, 32), 2) == ((2, 2), (4, 2), (2, 4))
    shape = ProgramShape(DECODE_STEP, BATCH, 64, cache_len=CACHE)
    whole = next(b for b in plans["data=4"].buckets if b.shape == shape)
    plan = plan_layout(TINY, parse_layout("data=4"), devices, TARGET, [shape], layers=1)
    [bucket] = plan.buckets
    assert bucket.extrapolated and [depth for depth, _ in bucket.points] == [(1, 1), (1, 2)]
    assert bucket.seconds == pytest.approx(whole.seconds, rel=0.1)
    # the parameters are exact, the rest (cache, temporaries) extended from one decoder layer
    assert bucket.memory.argument_bytes >= plan.params_bytes_per_chip
    assert bucket.memory.total_bytes == pytest.approx(whole.memory.total_bytes, rel=0.1)
    scanned = TINY.replace(scan_layers=True)  # the cache gains a leading layers axis
    full = plan_layout(
        scanned,
        parse_layout("data=4"),
        devices,
        TARGET,
        [shape],
        layers=1,
        memory=MEMORY_FULL_DEPTH,
    )
    [bucket] = full.buckets
    assert bucket.seconds == pytest.approx(plan.buckets[0].seconds)  # timed unscanned all the same
    assert bucket.memory is not bucket.compiled and bucket.memory.alias_bytes > 0
    assert bucket.memory.total_bytes == pytest.approx(whole.memory.total_bytes, rel=0.25)


def test_a_layout_or_bucket_that_cannot_fit_is_reported(devices):
    small_chip = dataclasses.replace(TARGET, chip=dataclasses.replace(TARGET.chip, hbm_gib=1e-4))
    skipped = plan_layout(TINY, parse_layout("data=4"), devices, small_chip, _shapes((64, 32)))
    assert not skipped.fits and "more than the 0.0001 GiB of HBM" in skipped.skipped
    assert skipped.buckets == () and skipped.programs is None
    # float32 logits of 16384 x 512 x 4000 per chip alone are 125 GiB
    huge = ProgramShape(SCORING, 4 * 16384, 64, target_len=512)
    plan = plan_layout(TINY, parse_layout("data=4"), devices, TARGET, [huge])
    [bucket] = plan.buckets
    assert not plan.fits and plan.programs is None
    assert bucket.compiled is None and bucket.memory is None
    assert "memory" in bucket.does_not_fit.lower()


# ----------------------------------------------------------------- the CLI


@pytest.fixture
def tiny_eval_gin(tmp_path, repo_root, monkeypatch):
    """The tiny model's eval gin; gin's configuration starts unlocked and is forgotten after
    (the CLI parses it into this process and locks it)."""
    import gin

    gin_file = tmp_path / "tiny_eval.gin"
    gin_file.write_text(TINY_EVAL_GIN)
    monkeypatch.chdir(repo_root)
    gin.clear_config()
    yield str(gin_file)
    gin.clear_config()


def _eval_args(gin_file: str, *extra: str) -> list[str]:
    return ["--eval", "xnli", "--gin_file", gin_file, "--topology", "v5p-8", *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval_layouts", "data=four"], "--eval_layouts: bad layout 'data=four'"),
        (["--eval", "no_such_task"], "--eval: unknown task 'no_such_task'"),
        (["--eval_buckets", "256"], "--eval_buckets: bad bucket '256'"),
        (["--eval_batch_size", "0"], "--eval_batch_size must be >= 1"),
        (["--num_slices", "2"], "--eval plans one slice"),
    ],
)
def test_bad_eval_arguments_exit_2(tiny_eval_gin, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main(_eval_args(tiny_eval_gin) + extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_needs_a_tpu_topology(tiny_eval_gin, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main(["--eval", "xnli", "--gin_file", tiny_eval_gin, "--devices", "4"])
    assert exit_info.value.code == 2
    assert "--eval needs a TPU --topology" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval_layouts", "data=2"], "layout data=2 spans 2 chips, the slice has 4"),
        (["--eval_layouts", "fsdp=4", "--eval_batch_size", "6"], "give a multiple of 4"),
        (["--eval_buckets", "1024:64"], "exceed the model's max_positions 512"),
    ],
)
def test_layouts_and_buckets_the_model_refuses_exit_2(tiny_eval_gin, capsys, extra, message):
    assert plan_cli.main(_eval_args(tiny_eval_gin) + extra) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("alexatm-plan: error: ") and message in line


def test_eval_plan_json(devices, tiny_eval_gin, tmp_path, capsys):
    out = tmp_path / "plan" / "eval.json"
    extra = ["--eval_layouts", "data=4", "--eval_buckets", "64:32", "--eval_max_new_tokens"]
    extra += [str(CACHE), "--format", "json", "--json_out", str(out)]
    assert plan_cli.main(_eval_args(tiny_eval_gin, *extra)) == 0
    printed, err = capsys.readouterr()
    report = json.loads(out.read_text())
    assert json.loads(printed) == report and f"JSON report written to {out}" in err
    assert report["mode"] == "eval" and report["tasks"] == ["xnli"] and report["batch_size"] == 8
    assert (
        report["target"]["hbm_gbytes_per_s"] == 2765.0 and report["memory_method"] == "extrapolated"
    )
    [layout] = report["layouts"]
    assert (layout["layout"], layout["rules"], layout["gin"], layout["fits"]) == (
        "data=4",
        "data_parallel",
        False,
        True,
    )
    programs = {entry["program"]: entry for entry in layout["programs"]}
    assert set(programs) == {PREFILL, DECODE_STEP, SCORING}
    for entry in programs.values():
        assert entry["cost_model_seconds"] > 0 and entry["memory"]["fits"]
        assert entry["ratio"] == pytest.approx(
            entry["cost_model_seconds"] / entry["roofline_seconds"]
        )
    assert (
        programs[DECODE_STEP]["roofline_kind"] == "hbm"
        and programs[SCORING]["roofline_kind"] == "flops"
    )
    assert programs[SCORING]["target_len"] == 32 and programs[PREFILL]["cache_len"] == CACHE
    text = format_eval_text(report)
    assert "layout data=4, rules data_parallel [alexatm-eval --fsdp 1 --tensor 1" in text
    assert text.count(" GiB/chip ") == 1 and "decode_step" in text and "hbm" in text
    assert np.isclose(
        programs[SCORING]["memory"]["total_gib"],
        sum(
            programs[SCORING]["memory"][k]
            for k in ("arguments_gib", "outputs_gib", "temporaries_gib", "code_gib")
        ),
    )
