"""Runs one evaluation task on a `TextModel` and writes results.json / results.md /
predictions.jsonl."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from alexatm_jax.decoding.options import DecodeOptions
from alexatm_jax.decoding.text import TextModel
from alexatm_jax.evaluation.choice_tasks import CHOICE_TASKS, ChoiceItem, ChoiceTask
from alexatm_jax.evaluation.generation_tasks import (
    E2ENLG,
    GenerationTask,
    SquadV2,
    Summarization,
)
from alexatm_jax.evaluation.translation_tasks import translation_task
from alexatm_jax.storage import as_path
from alexatm_jax.tokenization import clm_prompt

CHOICE_MODES = ("denoise", "clm")
# The release recipes generate with HF max_length=64, which counts the decoder start token.
DEFAULT_MAX_NEW_TOKENS = 63
SUMMARIZATION = {"xsum": True, "mlsum_de": False, "mlsum_es": False, "mlsum_fr": False}


def task_names() -> list[str]:
    """Every task name `get_task` accepts (translation as patterns)."""
    return (
        list(SUMMARIZATION)
        + ["flores101:<src>-<tgt>", "wmt14:<src>-<tgt>", "wmt16:<src>-<tgt>", "e2e_nlg", "squad_v2"]
        + list(CHOICE_TASKS)
    )


def get_task(name: str) -> GenerationTask | ChoiceTask:
    """The task called `name`; ValueError listing the known names otherwise."""
    if name in CHOICE_TASKS:
        return CHOICE_TASKS[name]
    if name in SUMMARIZATION:
        return Summarization(name, SUMMARIZATION[name])
    if name == "squad_v2":
        return SquadV2()
    if name == "e2e_nlg":
        return E2ENLG()
    task = translation_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
    return task


@dataclasses.dataclass
class EvalResult:
    """Metrics plus one record per example (the rows of predictions.jsonl)."""

    task: str
    split: str
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    settings: dict[str, Any]


def default_options(
    text_model: TextModel, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> DecodeOptions:
    """Greedy search banning the unknown piece (as the release's `bad_words_ids=[[0], ...]`)."""
    return DecodeOptions(
        max_new_tokens=max_new_tokens, bad_words=((text_model.tokenizer.special.unk,),)
    )


def resolve_shots(task: GenerationTask | ChoiceTask, shots: int | None) -> int:
    """The shot count to use (the task's default when None); ValueError when out of range."""
    if isinstance(task, ChoiceTask):
        if shots:
            raise ValueError(f"{task.name} is evaluated zero-shot: drop --shots")
        return 0
    shots = task.default_shots if shots is None else shots
    if shots < 0 or (task.max_shots is not None and shots > task.max_shots):
        raise ValueError(
            f"{task.name} takes 0 to {task.max_shots} shots, got {shots}"
            if task.max_shots is not None
            else f"shots must be >= 0, got {shots}"
        )
    return shots


def evaluate(
    task: GenerationTask | ChoiceTask,
    text_model: TextModel,
    data_dir: str,
    *,
    split: str | None = None,
    shots: int | None = None,
    limit: int | None = None,
    options: DecodeOptions | None = None,
    choice_mode: str = "denoise",
) -> EvalResult:
    """Runs `task` on `split` (default: the task's evaluation split) of the data in `data_dir`."""
    split = split or task.split
    shots = resolve_shots(task, shots)
    if isinstance(task, ChoiceTask):
        return _evaluate_choices(task, text_model, data_dir, split, limit, choice_mode)
    options = options or default_options(text_model)
    items = task.items(data_dir, split, text_model.tokenizer, shots, limit)
    prompts = [i.prompt for i in items]
    truncated = count_truncated(text_model, prompts)
    generations = text_model.generate(prompts, options, truncate=True)
    predictions = [task.clean(g.text) for g in generations]
    records = [
        {
            "prompt": i.prompt,
            "prediction": p,
            "reference": list(i.references),
            "raw_output": g.raw_text,
        }
        for i, p, g in zip(items, predictions, generations)
    ]
    settings = {
        "shots": shots,
        "max_new_tokens": options.max_new_tokens,
        "num_beams": options.num_beams,
        "sample": options.sample,
        "bad_words": [list(w) for w in options.bad_words],
    }
    return EvalResult(
        task.name,
        split,
        {
            "num_examples": len(items),
            **task.metrics(predictions, items),
            "truncated_inputs": truncated,
        },
        records,
        settings,
    )


def count_truncated(text_model: TextModel, texts: list[str]) -> int:
    """How many `texts` encode to more than the model's positions (`Tokenizer.fit` cuts them)."""
    engine = getattr(text_model, "engine", None)
    if engine is None:
        return 0
    limit = engine.config.max_positions
    return sum(len(text_model.tokenizer.encode(t)) > limit for t in texts)


def choice_pairs(items: Sequence[ChoiceItem], mode: str) -> list[tuple[str, str]]:
    """(input, target) texts of every item's choices, in order, as `mode` scores them: the whole
    choice text as both ('denoise'), or the `[CLM]` context and its continuation ('clm')."""
    if mode not in CHOICE_MODES:
        raise ValueError(f"choice mode must be one of {CHOICE_MODES}, got {mode!r}")
    return [
        (c.full_text, c.full_text) if mode == "denoise" else (clm_prompt(c.context), c.continuation)
        for item in items
        for c in item.choices
    ]


def _evaluate_choices(
    task: ChoiceTask, text_model: TextModel, data_dir: str, split: str, limit: int | None, mode: str
) -> EvalResult:
    if mode not in CHOICE_MODES:
        raise ValueError(f"choice mode must be one of {CHOICE_MODES}, got {mode!r}")
    items = task.items(data_dir, split, limit)
    pairs = choice_pairs(items, mode)
    truncated = count_truncated(text_model, [t for p in pairs for t in p])
    scores = text_model.score([p[0] for p in pairs], [p[1] for p in pairs], truncate=True)
    predicted, records, offset = [], [], 0
    for item in items:
        means = [s.score_mean for s in scores[offset : offset + len(item.choices)]]
        item_pairs = pairs[offset : offset + len(item.choices)]
        offset += len(item.choices)
        best = int(np.argmax(means))
        predicted.append(best)
        records.append(
            {
                "prompt": [p[0] for p in item_pairs],
                "targets": [p[1] for p in item_pairs],
                "choices": list(item.names),
                "score_mean": means,
                "prediction": item.names[best],
                "reference": list(item.answers) or [item.names[g] for g in item.gold],
            }
        )
    return EvalResult(
        task.name,
        split,
        {
            "num_examples": len(items),
            **task.metrics(items, predicted),
            "truncated_inputs": truncated,
        },
        records,
        {"shots": 0, "choice_mode": mode, "choice_score": "mean target log-probability"},
    )


def markdown_cell(text: str) -> str:
    """`text` safe inside a markdown table cell (`|` escaped, newlines as spaces)."""
    return text.replace("|", "\\|").replace("\n", " ")


def write_results(
    result: EvalResult, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None
) -> dict[str, epath.Path]:
    """Writes results.json, results.md and predictions.jsonl under `out_dir` (local or a URL
    such as gs://bucket/eval); returns the paths."""
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": result.task,
        "split": result.split,
        "metrics": result.metrics,
        "settings": {**result.settings, **(extra or {})},
    }
    paths = {
        "results.json": out / "results.json",
        "results.md": out / "results.md",
        "predictions.jsonl": out / "predictions.jsonl",
    }
    paths["results.json"].write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    rows = ["| task | split | metric | value |", "| --- | --- | --- | --- |"]
    for name, value in result.metrics.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        rows.append(f"| {result.task} | {result.split} | {name} | {markdown_cell(shown)} |")
    paths["results.md"].write_text("\n".join(rows) + "\n", encoding="utf-8")
    with paths["predictions.jsonl"].open("w", encoding="utf-8") as f:
        for record in result.records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return paths
