"""Prepared data on 1, 2 and 4 real processes (emulated CPU devices, 8 in all): the same global
batches, and a run started on 2 processes resumes exactly on 4 or on 1
(tests/prepared_multihost.py is each process)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests import prepared_fixtures
from tests.multihost_launch import Job, train_env

DEVICES, GLOBAL_BATCH, STEPS = 8, 16, 6
SCRIPT = ("tests/prepared_multihost.py",)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("prepared"))
    manifest, recipe = prepared_fixtures.write_prepared(directory)
    with open(os.path.join(directory, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    recipe_path = os.path.join(directory, "recipe.json")
    with open(recipe_path, "w") as handle:
        json.dump(recipe, handle)
    return directory, recipe_path


def read(prepared, tmp_path, name, processes, steps, resume=None):
    """Launch one job of `processes` processes; returns (global batches, saved state path)."""
    directory, recipe = prepared
    out = str(tmp_path / name)
    args = [directory, recipe, out, str(steps), str(GLOBAL_BATCH)]
    if resume:
        args += ["--resume", resume]
    job = Job(str(tmp_path / "logs"), name, processes)
    job.start(range(processes), args, DEVICES // processes, train_env(), entry=SCRIPT)
    try:
        codes = job.wait_all(timeout_s=240)
    finally:
        job.kill()
    assert codes == [0] * processes, job.tails()
    with np.load(os.path.join(out, "batches.npz")) as batches:
        return {k: batches[k] for k in batches.files}, os.path.join(out, "state.json")


def test_global_batches_and_resume_do_not_depend_on_the_process_count(prepared, tmp_path):
    reference, _ = read(prepared, tmp_path, "one", 1, STEPS)
    first, state = read(prepared, tmp_path, "two", 2, STEPS // 2)
    on_four, _ = read(prepared, tmp_path, "four_resumed", 4, STEPS - STEPS // 2, resume=state)
    on_one, _ = read(prepared, tmp_path, "one_resumed", 1, STEPS - STEPS // 2, resume=state)
    assert set(reference) >= {"encoder_input_tokens", "decoder_target_tokens"}
    for name, expected in reference.items():
        np.testing.assert_array_equal(first[name], expected[: STEPS // 2], err_msg=name)
        np.testing.assert_array_equal(on_four[name], expected[STEPS // 2 :], err_msg=name)
        np.testing.assert_array_equal(on_one[name], expected[STEPS // 2 :], err_msg=name)
    assert json.load(open(state))["rows_consumed"] == (STEPS // 2) * GLOBAL_BATCH
