"""The error contract of the CLIs (alexatm_jax/cli/errors.py): exit 2 and one line for what is
refused before any work, exit 1 and one line for failures while working, tracebacks only with
--log_level DEBUG; strict gin in alexatm-train / -info / -plan / -demo; alexatm-generate's one
output per input line; alexatm-convert on damaged files."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from inference_helpers import train_tiny_sentencepiece

from alexatm_jax.checkpoints import save_model_checkpoint
from alexatm_jax.cli import convert as convert_cli
from alexatm_jax.cli import demo as demo_cli
from alexatm_jax.cli import generate as generate_cli
from alexatm_jax.cli import info as info_cli
from alexatm_jax.cli import train as train_cli
from alexatm_jax.cli.errors import UsageError, run_command
from alexatm_jax.conversion.jax_to_hf import export_checkpoint_to_hf
from alexatm_jax.gin_registry import GinConfigError
from alexatm_jax.model import init_params
from alexatm_jax.tokenization import Tokenizer

SMOKE = "--gin_file=gin/experiments/smoke_cpu.gin"


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("alexatm-")]


def test_the_contract_maps_errors_to_exit_codes_and_one_line(capsys, caplog):
    def full_disk() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/metrics.jsonl")

    assert run_command("alexatm-x", full_disk) == 1
    assert capsys.readouterr().err == (
        "alexatm-x: error: disk full: No space left on device: "
        "/data/run/metrics.jsonl (--log_level DEBUG shows the "
        "traceback)\n"
    )

    def refused() -> int:
        raise UsageError("--flag must be positive")

    assert run_command("alexatm-x", refused) == 2
    assert capsys.readouterr().err == "alexatm-x: error: --flag must be positive\n"

    def broken() -> int:
        raise KeyError("params")

    with caplog.at_level(logging.DEBUG):
        assert run_command("alexatm-x", broken) == 1
    assert capsys.readouterr().err == "alexatm-x: error: KeyError: 'params'\n"
    assert "Traceback" in caplog.text  # --log_level DEBUG shows where it came from


def test_a_misspelt_macro_is_refused_everywhere(tmp_path, capsys):
    model_dir = tmp_path / "run"
    assert train_cli.main([SMOKE, "--gin.TRAIN_STEPSS=3", "--model_dir", str(model_dir)]) == 2
    [line] = error_lines(capsys)
    assert "sets the macro TRAIN_STEPSS, which no gin file uses (did you mean TRAIN_STEPS?)" in line
    assert not model_dir.exists()
    assert info_cli.main(["--gin_file=models/tiny.gin", "--gin.VOCAB_SIZ=9"]) == 2
    assert "(did you mean VOCAB_SIZE?)" in capsys.readouterr().err
    assert demo_cli.main(["--model_dir", str(model_dir), "--gin.TRAIN_STEPSS=3"]) == 2
    assert "did you mean TRAIN_STEPS?" in capsys.readouterr().err and not model_dir.exists()
    from alexatm_jax.cli.plan import parse_gin_config

    with pytest.raises(GinConfigError, match="did you mean BATCH_SIZE"):
        parse_gin_config(["gin/experiments/alexatm_20b_v5p256.gin"], ["BATCH_SIZ=8"], [])
    with pytest.raises(
        GinConfigError,
        match=r"parameter named 'log_evry'.*did you mean "
        r"log_every\?",
    ):
        parse_gin_config(["gin/experiments/smoke_cpu.gin"], ["train.log_evry=1"], [])


def test_refused_training_launches_exit_2_and_leave_model_dir_alone(
    tmp_path, capsys, demo_vocabulary
):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert train_cli.main([SMOKE, "--model_dir", str(a_file)]) == 2
    [line] = error_lines(capsys)
    assert "exists and is not a directory" in line and a_file.read_text() == "mine"
    model_dir = tmp_path / "run"
    assert (
        train_cli.main(
            [SMOKE, "--model_dir", str(model_dir), f"--gin.train.data_dir='{tmp_path / 'no_data'}'"]
        )
        == 2
    )
    [line] = error_lines(capsys)
    assert "data directory" in line and "no_data does not exist" in line
    assert not model_dir.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model_config):
    """A tiny model checkpoint with a SentencePiece tokenizer, and its HuggingFace export."""
    root = tmp_path_factory.mktemp("cli_errors")
    spm_path = train_tiny_sentencepiece(str(root))
    config = tiny_model_config.replace(vocab_size=Tokenizer(spm_path).vocab_size, max_positions=64)
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    checkpoint = save_model_checkpoint(root / "ckpt", config, params, [spm_path])
    hf_dir = export_checkpoint_to_hf(checkpoint, root / "hf", show_progress=False)
    return checkpoint, hf_dir


def test_generate_answers_every_input_line_or_names_the_bad_one(tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = tiny_checkpoint
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The weather\n\n   \nHello\n")
    out = tmp_path / "out.txt"
    common = ["--checkpoint", str(checkpoint), "--max_new_tokens", "3"]
    assert generate_cli.main(common + ["--input_file", str(prompts), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4  # blank lines included, in order
    records = tmp_path / "prompts.jsonl"
    records.write_text(json.dumps({"input": "a"}) + "\nnot json\n")
    with pytest.raises(SystemExit) as exit_info:
        generate_cli.main(common + ["--input_file", str(records)])
    assert (
        exit_info.value.code == 2 and f"{records}:2 is not a JSON object" in capsys.readouterr().err
    )
    records.write_text(json.dumps({"input": "a"}) + "\n\n" + json.dumps({"input": "b"}) + "\n")
    with pytest.raises(SystemExit):
        generate_cli.main(common + ["--input_file", str(records)])
    assert f"{records}:2 is not a JSON object" in capsys.readouterr().err


def test_convert_names_a_damaged_input_file_and_exits_1(tiny_checkpoint, tmp_path, capsys):
    _, hf_dir = tiny_checkpoint
    truncated = shutil.copytree(hf_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    os.truncate(weights, os.path.getsize(weights) // 2)
    assert (
        convert_cli.main(["hf-to-jax", "--hf_dir", str(truncated), "--out", str(tmp_path / "a")])
        == 1
    )
    [line] = error_lines(capsys)
    assert f"{weights} is truncated" in line and not (tmp_path / "a").exists()
    broken = shutil.copytree(hf_dir, tmp_path / "broken")
    (broken / "config.json").write_text('{"d_model": 32,')
    assert (
        convert_cli.main(["hf-to-jax", "--hf_dir", str(broken), "--out", str(tmp_path / "b")]) == 1
    )
    [line] = error_lines(capsys)
    assert f"{broken / 'config.json'} is not valid JSON" in line
