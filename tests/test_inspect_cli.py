"""alexatm-inspect: JSON schema and statistics, text rendering, argument validation."""

import json

import pytest
from data_fixtures import vocab_path, write_corpus

from alexatm_jax.cli import inspect_mixture


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(
        str(tmp_path_factory.mktemp("corpus")), languages=("en", "ja"), documents=40
    )


def test_json_examples_and_summary(corpus, capsys):
    inspect_mixture.main(
        [
            "--mixture",
            "alexatm_pretrain_local",
            "--data_dir",
            corpus,
            "--vocab",
            vocab_path(),
            "--stats",
            "300",
            "--format",
            "json",
            "--inputs_length",
            "128",
            "--targets_length",
            "128",
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    examples, summary = lines[:-1], lines[-1]["summary"]
    assert len(examples) == 300 and summary["examples"] == 300
    for ex in examples:
        assert set(ex) >= {"task", "language", "source", "inputs", "targets"}
        if ex["task"] == "denoise":
            deleted = {s + i for s, n in ex["deleted_spans"] for i in range(n)}
            assert ex["inputs"] == [t for i, t in enumerate(ex["targets"]) if i not in deleted]
            assert 3 not in ex["inputs"]
        else:
            assert ex["task"] == "clm" and ex["inputs"][0] == 3
    assert summary["clm_share"] == pytest.approx(0.2, abs=0.02)
    assert summary["denoise"]["deletion_rate"] == pytest.approx(0.15, abs=0.01)
    assert summary["denoise"]["inputs_not_subsequence_of_targets"] == 0
    assert summary["clm"]["inputs_not_starting_with_clm"] == 0
    assert set(summary["languages"]) == {"en", "ja"}
    assert summary["corpus"]["languages"] == ["en", "ja"] and "fr" in summary["corpus"]["left_out"]
    assert summary["config"]["special_ids"]["clm"] == 3
    assert 0 <= summary["padding"]["packed_targets"] <= summary["padding"]["unpacked_targets"]


def test_text_mode_marks_deleted_spans(corpus, capsys):
    inspect_mixture.main(
        [
            "--mixture",
            "alexatm_pretrain_local",
            "--data_dir",
            corpus,
            "--vocab",
            vocab_path(),
            "-n",
            "4",
            "--inputs_length",
            "64",
            "--targets_length",
            "64",
            "--seed",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("--- example") == 4 and "task=" in out and "language=" in out
    assert "⟦" in out and "⟧" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mixture", "x", "-n", "0"], "-n must be >= 1"),
        (["--mixture", "x", "--data_dir", "/nonexistent"], "is not a directory"),
        (["--mixture", "x", "--vocab", "/nonexistent.model"], "does not exist"),
        (["--mixture", "x", "--format", "yaml"], "invalid choice"),
    ],
)
def test_arguments_are_validated(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_mixture.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unknown_mixture_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_mixture.main(["--mixture", "no_such_mixture", "--vocab", vocab_path()])
    assert "known mixtures" in str(exit_info.value.code) and "alexatm_pretrain" in str(
        exit_info.value.code
    )
