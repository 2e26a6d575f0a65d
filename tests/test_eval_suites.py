"""alexatm-eval --suite on a tiny checkpoint: the Flores-101 suite over 12 languages of
HuggingFace-layout data, its 12x12 matrix equal to sacrebleu recomputed from predictions.jsonl,
the heatmap, resuming, and a summary with the paper's figures beside ours."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
import sacrebleu
from hf_layouts import parquet, save_to_disk
from inference_helpers import sample_lines, train_tiny_sentencepiece

from alexatm_jax.checkpoints import save_model_checkpoint
from alexatm_jax.cli import evaluate as eval_cli
from alexatm_jax.evaluation import summary as eval_summary
from alexatm_jax.evaluation.suites import FLORES_PAIRS, SUITES
from alexatm_jax.evaluation.translation_tasks import FLORES_LANGUAGES
from alexatm_jax.model import init_params
from alexatm_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_config) -> pathlib.Path:
    root = tmp_path_factory.mktemp("suite_ckpt")
    spm_path = train_tiny_sentencepiece(str(root))
    config = tiny_model_config.replace(
        vocab_size=Tokenizer(spm_path).vocab_size,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_positions=128,
        init_std=0.5,
    )
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    return save_model_checkpoint(root / "ckpt", config, params, [spm_path])


@pytest.fixture(scope="module")
def flores_dir(tmp_path_factory) -> pathlib.Path:
    """Flores-shaped data of the 12 languages, 3 dev + 3 devtest sentences each, half the
    languages as `save_to_disk` directories (Flores-101 configs `eng`...), half as parquet files
    (Flores-200 configs `eng_Latn`...), with the Hub's columns."""
    root = tmp_path_factory.mktemp("flores_hf")
    lines = sample_lines(per_language=6)
    for index, (lang, (_, code101, code200)) in enumerate(FLORES_LANGUAGES.items()):
        rows = [
            {
                "id": i,
                "URL": "u",
                "domain": "d",
                "topic": "t",
                "has_image": 0,
                "has_hyperlink": 0,
                "sentence": line[:60],
            }
            for i, line in enumerate(lines[lang])
        ]
        splits = {"dev": rows[:3], "devtest": rows[3:6]}
        if index % 2:
            save_to_disk(root / "flores101" / code101, splits)
        else:
            parquet(root / "flores101" / code200, splits)
    return root


def test_flores_suite_matrix_equals_sacrebleu_resumes_and_plots(checkpoint, flores_dir, tmp_path):
    out = tmp_path / "suite"
    argv = [
        "--checkpoint",
        checkpoint,
        "--suite",
        "flores101",
        "--data_dir",
        flores_dir,
        "--limit",
        2,
        "--out",
        out,
        "--max_new_tokens",
        6,
        "--batch_size",
        4,
    ]
    assert eval_cli.main([str(a) for a in argv]) == 0
    report = json.loads((out / "summary.json").read_text())
    flores = report["flores"]
    assert flores["metric"] == "bleu_13a" and flores["tokenize"] == "13a"  # never called spBLEU
    assert len(FLORES_PAIRS) == 132
    assert sum(len(row) for row in flores["matrix"].values()) == 132
    for pair in ("en-de", "ja-ta", "te-ar"):
        source, target = pair.split("-")
        rows = [
            json.loads(line)
            for line in (out / f"flores101_{pair}" / "predictions.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 2
        assert rows[0]["prompt"].startswith("[CLM] Sentence:  ")
        direct = sacrebleu.corpus_bleu(
            [r["prediction"] for r in rows], [[r["reference"][0] for r in rows]], tokenize="13a"
        )
        assert flores["matrix"][source][target] == pytest.approx(direct.score)
    row = flores["matrix"]["en"]
    assert flores["source_average"]["en"] == pytest.approx(sum(row.values()) / 11)
    markdown = (out / "summary.md").read_text()
    assert "| src \\ tgt | ar | en | fr | de |" in markdown
    assert (out / "flores_spbleu.png").read_bytes()[:4] == b"\x89PNG"
    # Resume: finished pairs are read back, a removed one is evaluated again.
    stamp = (out / "flores101_en-de" / "results.json").stat().st_mtime_ns
    (out / "flores101_fr-it" / "results.json").unlink()
    assert eval_cli.main([str(a) for a in argv]) == 0
    assert (out / "flores101_en-de" / "results.json").stat().st_mtime_ns == stamp
    assert (out / "flores101_fr-it" / "results.json").is_file()
    assert json.loads((out / "summary.json").read_text())["flores"] == flores
    # Another --limit is another evaluation: nothing is reused.
    argv[argv.index("--limit") + 1] = 1
    assert eval_cli.main([str(a) for a in argv]) == 0
    assert (out / "flores101_en-de" / "results.json").stat().st_mtime_ns != stamp
    assert (
        json.loads((out / "flores101_en-de" / "results.json").read_text())["metrics"][
            "num_examples"
        ]
        == 1
    )


def test_summary_puts_the_paper_figures_beside_ours():
    metrics = {"accuracy": 50.0}
    results = {t: {"metrics": {"f1a": 40.0, "f1": 80.0, **metrics}} for t in SUITES["superglue"]}
    results["xnli"] = {
        "metrics": {
            "accuracy": 40.0,
            "accuracy_en": 50.0,
            "accuracy_fr": 30.0,
            "accuracy_language_mean": 40.0,
        }
    }
    results["wmt14:fr-en"] = {"metrics": {"bleu": 30.0}}
    report = eval_summary.summarize("paper", results, {"xsum": "no data"})
    assert report["tasks"]["boolq"] == {
        "metric": "accuracy",
        "value": 50.0,
        "paper": 69.4,
        "metrics": results["boolq"]["metrics"],
    }
    assert report["tasks"]["multirc"]["paper"] == 59.6
    assert report["tasks"]["wmt14:fr-en"]["paper"] == 38.38
    assert report["superglue_average"]["paper"] == 69.16
    assert report["superglue_average"]["value"] == pytest.approx((6 * 50 + 40 + 80) / 8)
    assert report["per_language"]["xnli"] == {"en": 50.0, "fr": 30.0}
    markdown = eval_summary.summary_markdown(report)
    assert "| boolq | accuracy | 50.00 | 69.40 |" in markdown
    assert "| xnli | accuracy | 40.00 |  |" in markdown  # no published figure: left empty
    assert "- xsum: no data" in markdown
