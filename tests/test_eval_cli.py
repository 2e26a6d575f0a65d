"""alexatm-generate / -score / -eval end to end on a tiny checkpoint with a tokenizer."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from inference_helpers import train_tiny_sentencepiece
from rouge_score import rouge_scorer

from alexatm_jax.checkpoints import save_model_checkpoint
from alexatm_jax.cli import evaluate as eval_cli
from alexatm_jax.cli import generate as generate_cli
from alexatm_jax.cli import score as score_cli
from alexatm_jax.decoding.loading import load_text_model
from alexatm_jax.decoding.options import DecodeOptions
from alexatm_jax.model import init_params
from alexatm_jax.tokenization import Tokenizer

PROMPTS = [
    "The weather today",
    "A much longer prompt about the history of the city and river",
    "Hello",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_config) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cli")
    spm_path = train_tiny_sentencepiece(str(root))
    tokenizer = Tokenizer(spm_path)
    config = tiny_model_config.replace(
        vocab_size=tokenizer.vocab_size, max_positions=256, init_std=0.5
    )
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    return save_model_checkpoint(root / "ckpt", config, params, [spm_path])


@pytest.fixture(scope="module")
def text_model(checkpoint):
    return load_text_model(checkpoint, batch_size=4)


def run_cli(main, argv) -> None:
    assert main([str(a) for a in argv]) == 0


def test_generate_cli_matches_library_and_applies_stop_strings(checkpoint, text_model, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out.jsonl"
    common = [
        "--checkpoint",
        checkpoint,
        "--input_file",
        prompts_file,
        "--max_new_tokens",
        8,
        "--batch_size",
        4,
        "--format",
        "jsonl",
    ]
    run_cli(generate_cli.main, common + ["--output", out])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == ["[CLM] " + p for p in PROMPTS]
    expected = text_model.generate(["[CLM] " + p for p in PROMPTS], DecodeOptions(max_new_tokens=8))
    assert [r["output"] for r in rows] == [g.text for g in expected]
    assert [r["output_ids"] for r in rows] == [g.token_ids for g in expected]
    assert [r["score"] for r in rows] == pytest.approx([g.score for g in expected], abs=1e-5)
    longest = max(rows, key=lambda r: len(r["output"]))["output"]
    assert len(longest) >= 4, "the random model should produce some text"
    stop = longest[2:4]
    run_cli(generate_cli.main, common + ["--output", out, "--stop", stop])
    cut = [json.loads(line)["output"] for line in out.read_text().splitlines()]
    assert all(stop not in c for c in cut)
    assert cut[[r["output"] for r in rows].index(longest)] == longest[: longest.find(stop)]
    run_cli(generate_cli.main, common + ["--output", out, "--beams", 2, "--mode", "denoise"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == PROMPTS


def test_score_cli_equals_library_scores(checkpoint, text_model, tmp_path):
    pairs = [
        {"input": "[CLM] The weather", "target": "is nice"},
        {"input": "Hello there", "target": "Hello there, friend"},
    ]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "scores.jsonl"
    run_cli(
        score_cli.main, ["--checkpoint", checkpoint, "--input_file", pairs_file, "--output", out]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = text_model.score([p["input"] for p in pairs], [p["target"] for p in pairs])
    for row, exp, pair in zip(rows, expected, pairs):
        assert row["num_tokens"] == len(text_model.tokenizer.encode(pair["target"]))
        assert row["score_sum"] == pytest.approx(exp.score_sum, rel=1e-5)
        assert row["score_mean"] == pytest.approx(row["score_sum"] / row["num_tokens"])
        assert row["score_sum"] < 0


def test_eval_cli_writes_results_whose_metrics_match_rouge(checkpoint, tmp_path):
    data = tmp_path / "data" / "xsum"
    data.mkdir(parents=True)
    rows = [
        {"document": "Short doc number one.", "summary": "One."},
        {"document": "The river flows through the old city.", "summary": "A river."},
        {"document": "Cats sleep a lot.", "summary": "Cats sleep."},
    ]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results"
    run_cli(
        eval_cli.main,
        [
            "--checkpoint",
            checkpoint,
            "--task",
            "xsum",
            "--data_dir",
            tmp_path / "data",
            "--limit",
            2,
            "--out",
            out,
            "--max_new_tokens",
            8,
            "--batch_size",
            4,
        ],
    )
    results = json.loads((out / "results.json").read_text())
    lines = (out / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) == 2 and results["metrics"]["num_examples"] == 2
    assert predictions[0]["prompt"] == (
        "[CLM] Article: Short doc number one. ==> Short summary: One. <br><br><br> "
        "Article: Short doc number one. ==> Short summary:"
    )
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    direct = np.mean(
        [scorer.score(p["reference"][0], p["prediction"])["rouge1"].fmeasure for p in predictions]
    )
    assert results["metrics"]["rouge1"] == pytest.approx(100 * direct)
    assert "| xsum | test | rouge1 |" in (out / "results.md").read_text()


def test_cli_argument_errors(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        score_cli.main(["--checkpoint", str(tmp_path / "missing"), "--input_file", "x.jsonl"])
    assert exit_info.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--task",
                "bogus",
                "--data_dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_cli.main(["--checkpoint", str(checkpoint), "--sample", "--beams", "2"])
    assert "sampling with num_beams" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--task",
                "rte",
                "--shots",
                "1",
                "--data_dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "zero-shot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_cli.main(["--checkpoint", str(checkpoint), "--rules", "nope"])
    assert "--rules 'nope' is unknown" in capsys.readouterr().err


def test_eval_cli_truncates_long_inputs_and_reports_bad_data(checkpoint, tmp_path, capsys):
    long_context = " ".join(["The river flows through the old city."] * 60)  # > 256 positions
    data = tmp_path / "data" / "squad_v2"
    data.mkdir(parents=True)
    (data / "dev.jsonl").write_text(
        json.dumps({"context": long_context, "question": "What flows?", "answers": ["river"]})
        + "\n"
        + json.dumps({"context": "Short.", "question": "Q?", "answers": []})
        + "\n"
    )
    out = tmp_path / "squad"
    common = [
        "--checkpoint",
        checkpoint,
        "--data_dir",
        tmp_path / "data",
        "--max_new_tokens",
        4,
        "--batch_size",
        4,
    ]
    run_cli(eval_cli.main, common + ["--task", "squad_v2", "--out", out])
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["truncated_inputs"] == 1 and results["metrics"]["num_examples"] == 2
    assert results["settings"]["tokenizer_convention"] == "sentencepiece"
    (data / "dev.jsonl").write_text(
        json.dumps({"context": "C", "question": "Q", "answers": "France"}) + "\n"
    )
    assert eval_cli.main([str(a) for a in common + ["--task", "squad_v2", "--out", out]]) == 1
    error = capsys.readouterr().err
    assert "squad_v2/dev.jsonl:1: field `answers` must be a list of strings" in error
    assert "Traceback" not in error
    with pytest.raises(SystemExit):
        eval_cli.main(
            [str(a) for a in common + ["--suite", "superglue", "--shots", "1", "--out", out]]
        )
    assert "--shots applies to --task only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.main(
            [
                str(a)
                for a in common
                + [
                    "--task",
                    "flores101:en-de",
                    "--out",
                    out,
                    "--spbleu_model",
                    tmp_path / "nope.model",
                ]
            ]
        )
    assert "--spbleu_model" in capsys.readouterr().err
