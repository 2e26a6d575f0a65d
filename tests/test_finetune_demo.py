"""`make finetune-demo` (alexatm_jax/cli/finetune_demo.py): the fine-tuning path end to end on
CPU. The short form (in `make test`) runs a few steps: the task's JSONL files and the starting
checkpoint are written, the model comes from the checkpoint, BLEU is scored every EVAL_PERIOD
steps into metrics.jsonl and TensorBoard, the best checkpoint is kept and the curve is plotted.
The long form (slow) is the demo as shipped: held-out BLEU must rise far above its start."""

from __future__ import annotations

import json
import os

import pytest

from alexatm_jax.cli import finetune_demo


def _records(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_a_short_finetune_demo_scores_keeps_the_best_and_plots(tmp_path, demo_vocabulary, capsys):
    code = finetune_demo.main(
        ["--out", str(tmp_path), "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=2",
         "--gin.CHECKPOINT_PERIOD=4", "--gin.BATCH_SIZE=8",
         "--gin.OptimizerConfig.warmup_steps=1", "--gin.TaskMetricEval.max_examples=8",
         "--examples", "0"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "before fine-tuning" in out and "held-out BLEU" in out
    pairs = (tmp_path / "data" / "validation.jsonl").read_text().splitlines()
    first = json.loads(pairs[0])
    assert first["target"].split() == first["input"].split()[::-1]
    run = tmp_path / "run"
    scored = [r for r in _records(run) if "eval_finetune/bleu" in r]
    assert [r["step"] for r in scored] == [2, 4]
    assert all("eval_loss" in r and "eval_finetune/chrf" in r for r in scored)
    assert list((run / "tensorboard").iterdir())
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["metric"] == "eval_finetune/bleu" and best["step"] in (2, 4)
    assert (run / "best" / "model_config.json").is_file()
    assert (run / "finetune_metric.png").stat().st_size > 0
    config = json.loads((run / "model_config.json").read_text())
    assert config["d_model"] == 128  # from the checkpoint: the gin binds no architecture


@pytest.mark.slow
def test_the_finetune_demo_learns_its_task(tmp_path, demo_vocabulary, capsys):
    assert finetune_demo.main(["--out", str(tmp_path)]) == 0
    curve = [
        r["eval_finetune/bleu"] for r in _records(tmp_path / "run") if "eval_finetune/bleu" in r
    ]
    assert curve[-1] > 60.0 and max(curve) > 60.0, curve
