"""Few-shot evaluation during training (alexatm_jax/training/few_shot_eval.py): the paper's tasks
run inside the training job every `period` steps, log `eval/<task>/<metric>`, and leave the
training losses exactly as they are without it."""

from __future__ import annotations

import json

import pytest
from test_eval_prompts import write_jsonl

from alexatm_jax import gin_registry
from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.few_shot_eval import FewShotEval, expand_tasks, flat_metrics
from alexatm_jax.training.trainer import train

STEPS = 4


def test_suites_expand_to_their_tasks_once_and_unknown_names_are_refused():
    assert expand_tasks(["copa", "superglue"])[:2] == ("copa", "boolq")
    assert expand_tasks(["copa", "superglue"]).count("copa") == 1
    with pytest.raises(ValueError, match="unknown task 'xsumm'"):
        expand_tasks(["xsumm"])
    with pytest.raises(ValueError, match="tasks is empty.*data_dir is required"):
        FewShotEval()
    assert flat_metrics("eval/squad_v2", {"exact": 1, "HasAns": {"f1": 0.5}, "sig": "x"}) == {
        "eval/squad_v2/exact": 1.0,
        "eval/squad_v2/HasAns/f1": 0.5,
    }


def test_a_period_that_is_not_a_multiple_of_eval_period_is_refused(tiny_model_config):
    hook = FewShotEval(tasks=["copa"], data_dir="/data", period=3)
    config = TrainConfig(
        model_config=tiny_model_config, train_steps=4, batch_size=2, eval_period=2,
        eval_hooks=(hook,),
    )  # fmt: skip
    assert "FewShotEval.period=3 must be a multiple of eval_period=2" in " ".join(config.problems())


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> str:
    """xsum (1-shot: train and test) and copa (dev) rows in alexatm-eval's layout."""
    root = tmp_path_factory.mktemp("eval_data")
    rows = [
        {"document": "The river flows through the old city.", "summary": "A river."},
        {"document": "Le chat dort sur le tapis.", "summary": "Un chat."},
    ]
    write_jsonl(root / "xsum" / "train.jsonl", rows)
    write_jsonl(root / "xsum" / "test.jsonl", rows)
    copa = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang."}
    write_jsonl(root / "copa" / "dev.jsonl", [{**copa, "question": "cause", "label": 0}] * 3)
    return str(root)


def _losses_and_records(model_dir, vocab: str, hooks: list[str]) -> list[dict]:
    gin_registry.parse_gin(
        ["gin/experiments/smoke_cpu.gin"],
        [
            f"MODEL_DIR = '{model_dir}'",
            f"TRAIN_STEPS = {STEPS}",
            f"CHECKPOINT_PERIOD = {STEPS}",
            "EVAL_PERIOD = 2",
            "train.data_source = 'synthetic'",
            f"train.vocab_path = '{vocab}'",
            "train.progress_bar = False",
            "ModelConfig.vocab_size = 4000",
            *hooks,
        ],
    )
    train(gin_registry.train_config_from_gin())
    with open(model_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_the_tasks_run_every_period_log_their_metrics_and_change_no_loss(
    tmp_path, demo_vocabulary, eval_data
):
    hooks = [
        "train.eval_hooks = [@FewShotEval()]",
        "FewShotEval.tasks = ['xsum', 'copa']",
        f"FewShotEval.data_dir = '{eval_data}'",
        "FewShotEval.limit = 2",
        "FewShotEval.period = 4",
        "FewShotEval.max_new_tokens = 4",
    ]
    with_eval = _losses_and_records(tmp_path / "with", demo_vocabulary, hooks)
    without = _losses_and_records(tmp_path / "without", demo_vocabulary, [])
    assert [r["loss"] for r in with_eval] == [r["loss"] for r in without]
    scored = {r["step"]: r for r in with_eval if any(k.startswith("eval/") for k in r)}
    assert list(scored) == [4]  # period 4: not at the evaluation of step 2
    record = scored[4]
    assert record["eval/xsum/num_examples"] == 2 and "eval/xsum/rouge2" in record
    assert record["eval/copa/num_examples"] == 2 and 0 <= record["eval/copa/accuracy"] <= 100
    assert record["eval/seconds"] > 0
    # The share of wall time at period 4: seconds / (seconds + 4 x the mean step time).
    share = record["eval/seconds"] / (record["eval/seconds"] + 4 * record["step_time_s"])
    assert record["eval/share_of_time"] == pytest.approx(share)
