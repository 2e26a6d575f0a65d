"""Evaluation suites: many tasks on one loaded model, resumable, summarised beside the paper.

`run_suite` evaluates each task of a suite in turn into `OUT/<task>/` (results.json,
results.md, predictions.jsonl), skipping tasks whose results.json already exists (a stopped
suite resumes; one written with another `limit` is run again), then writes `OUT/summary.json`,
`OUT/summary.md` and, for Flores, `OUT/flores_spbleu.png`. Only process 0 writes; every process
runs the same tasks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from etils import epath
from tqdm.auto import tqdm

from alexatm_jax.evaluation import harness, summary
from alexatm_jax.evaluation.data import DataError
from alexatm_jax.evaluation.translation_tasks import FLORES_LANGUAGES
from alexatm_jax.storage import as_path

FLORES_PAIRS = tuple(
    f"flores101:{s}-{t}" for s in FLORES_LANGUAGES for t in FLORES_LANGUAGES if s != t
)
SUMMARIZATION = ("xsum", "mlsum_de", "mlsum_es", "mlsum_fr")
SUPERGLUE = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
XLINGUAL = ("xnli", "xcopa", "pawsx", "xwinograd")
QA = ("squad_v2",)
WMT = ("wmt14:fr-en", "wmt16:de-en")
SUITES: dict[str, tuple[str, ...]] = {
    "flores101": FLORES_PAIRS,
    "summarization": SUMMARIZATION,
    "superglue": SUPERGLUE,
    "xlingual": XLINGUAL,
    "qa": QA,
    "wmt": WMT,
    "e2e": ("e2e_nlg",),
    "paper": SUMMARIZATION + FLORES_PAIRS + SUPERGLUE + XLINGUAL + QA + ("e2e_nlg",) + WMT,
}


def task_directory(task: str) -> str:
    """The output folder name of a task (`flores101:en-de` -> `flores101_en-de`)."""
    return task.replace(":", "_")


def suite_tasks(name: str) -> tuple[str, ...]:
    """The task names of suite `name`; ValueError listing the suites otherwise."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[name]


def run_suite(
    name: str,
    text_model: Any,
    data_dir: str,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    options=None,
    choice_mode: str = "denoise",
    extra: dict[str, Any] | None = None,
    writer: bool = True,
    progress: bool = True,
    note: Callable[[str], None] = logging.warning,
    agree: Callable[[list[bool]], list[bool]] = list,
) -> dict[str, Any]:
    """Runs suite `name` (module doc); returns the summary (also written as summary.json).

    A task without data on the machine is skipped and listed under `skipped` with the reason;
    a task with bad data stops the suite with a DataError naming the place. `agree` makes every
    process skip the same finished tasks (the writer's view; see `agree_across_processes`).
    """
    out = as_path(out_dir)
    tasks = suite_tasks(name)
    saved = {t: _saved_result(out / task_directory(t) / "results.json", limit, note) for t in tasks}
    finished = dict(zip(tasks, agree([saved[t] is not None for t in tasks])))
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    examples = 0
    engine = getattr(text_model, "engine", None)
    if engine is not None and progress:
        engine.show_progress = False  # one suite bar instead of one bar per task
    bar = tqdm(tasks, desc=f"suite {name}", unit="task", disable=not progress)
    for task_name in bar:
        path = out / task_directory(task_name) / "results.json"
        bar.set_postfix_str(f"{task_name}, {examples} examples done")
        if finished[task_name]:
            if saved[task_name] is not None:  # absent on processes that do not write
                results[task_name] = saved[task_name]
                examples += saved[task_name]["metrics"].get("num_examples", 0)
            continue
        try:
            result = harness.evaluate(
                harness.get_task(task_name),
                text_model,
                data_dir,
                limit=limit,
                options=options,
                choice_mode=choice_mode,
            )
        except FileNotFoundError as e:
            skipped[task_name] = str(e)
            note(f"{task_name}: skipped, no data ({e})")
            continue
        except DataError as e:
            raise DataError(f"{task_name}: {e}") from e
        if writer:
            harness.write_results(
                result, path.parent, {**(extra or {}), "suite": name, "limit": limit}
            )
        results[task_name] = {
            "task": result.task,
            "split": result.split,
            "metrics": result.metrics,
            "settings": {**result.settings, "limit": limit},
        }
        examples += result.metrics.get("num_examples", 0)
    bar.set_postfix_str(f"{examples} examples")
    bar.close()
    report = summary.summarize(name, results, skipped)
    if writer:
        summary.write_summary(report, out)
    return report


def _saved_result(
    path: epath.Path, limit: int | None, note: Callable[[str], None]
) -> dict[str, Any] | None:
    """A finished task's results.json, or None (absent, or written with another limit)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("settings", {}).get("limit") != limit:
        note(f"{path} was written with another --limit; evaluating that task again")
        return None
    return saved


def agree_across_processes(flags: list[bool]) -> list[bool]:
    """Process 0's `flags` on every process (one broadcast), so that all skip the same tasks."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return list(flags)
    from jax.experimental import multihost_utils

    return [bool(f) for f in multihost_utils.broadcast_one_to_all(np.array(flags, np.int32))]
