"""What an evaluation suite asks of the inference engine, task by task: rows and token lengths.

Two sources:

* measured (`measured_workload`): each task's prompts, or choice texts, built from a suite data
  directory exactly as `alexatm-eval` builds them, and counted with the caller's tokenizer;
* paper defaults (`paper_workload`): the published test/dev set sizes and our estimated typical
  lengths (`alexatm_jax/evaluation/paper_workloads.json`,
  docs/paper_facts.md#evaluation-sets-sizes-and-typical-lengths), for a suite without data.

Greedy output lengths are unknown before the model runs, so a generation row's expected length
is its first reference's token count, capped at max_new_tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from alexatm_jax.evaluation import harness
from alexatm_jax.evaluation.choice_tasks import ChoiceTask
from alexatm_jax.tokenization import Tokenizer

GENERATE = "generate"
SCORE = "score"
MEASURED = "measured"
PAPER_DEFAULTS = "paper defaults"
PAPER_WORKLOADS = pathlib.Path(harness.__file__).with_name("paper_workloads.json")


@dataclasses.dataclass(frozen=True)
class TaskWorkload:
    """One task's work for the engine, one length per engine row, in tokens as the engine sees
    them (BOS/EOS included, before `Tokenizer.fit` cuts inputs to max_positions).

    kind: GENERATE (one row per example) or SCORE (one row per example and choice).
    input_tokens: each row's prompt (GENERATE) or choice input (SCORE).
    output_tokens: GENERATE: each row's expected generated tokens (at most max_new_tokens);
        SCORE: each row's teacher-forced target.
    max_new_tokens: the generation limit, also the decoder cache length.
    source: MEASURED or PAPER_DEFAULTS.
    """

    task: str
    kind: str
    examples: int
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    max_new_tokens: int
    source: str

    def __post_init__(self):
        if self.kind not in (GENERATE, SCORE):
            raise ValueError(f"kind must be {GENERATE!r} or {SCORE!r}, got {self.kind!r}")
        if len(self.input_tokens) != len(self.output_tokens):
            raise ValueError(
                f"{self.task}: {len(self.input_tokens)} input lengths but "
                f"{len(self.output_tokens)} output lengths"
            )

    @property
    def rows(self) -> int:
        """Engine rows: prompts, or example x choice pairs."""
        return len(self.input_tokens)

    @property
    def choices_per_example(self) -> float:
        """Rows per example (1 for generation)."""
        return self.rows / max(self.examples, 1)


def typical_workload(
    task: str,
    kind: str,
    examples: int,
    rows_per_example: int,
    input_tokens: int,
    output_tokens: int,
    max_new_tokens: int,
    source: str = PAPER_DEFAULTS,
) -> TaskWorkload:
    """A workload whose every row has the same typical lengths (in tokens); generated tokens
    are capped at max_new_tokens."""
    rows = examples * rows_per_example
    if kind == GENERATE:
        output_tokens = min(output_tokens, max_new_tokens)
    return TaskWorkload(
        task,
        kind,
        examples,
        (input_tokens,) * rows,
        (output_tokens,) * rows,
        max_new_tokens,
        source,
    )


def paper_table() -> dict[str, Any]:
    """The paper defaults file (`PAPER_WORKLOADS`)."""
    return json.loads(PAPER_WORKLOADS.read_text(encoding="utf-8"))


def _limited(count: int, limit: int | None) -> int:
    return count if limit is None else min(count, limit)


def paper_workload(
    task: str,
    *,
    max_new_tokens: int = harness.DEFAULT_MAX_NEW_TOKENS,
    limit: int | None = None,
    table: dict[str, Any] | None = None,
) -> TaskWorkload:
    """Task `task` with the published set size and our estimated typical lengths (choice tasks in
    the default 'denoise' mode); `limit` caps the examples as `alexatm-eval --limit` does (per
    language for the multilingual tasks). KeyError for a task the table lacks."""
    table = table or paper_table()
    if task.startswith("flores101:"):
        flores = table["flores101"]
        source, target = task.split(":", 1)[1].split("-")
        lengths = flores["sentence_tokens"]
        return typical_workload(
            task,
            GENERATE,
            _limited(flores["sentences"], limit),
            1,
            flores["template_tokens"] + 2 * lengths[source] + lengths[target],
            lengths[target] + flores["generated_extra_tokens"],
            max_new_tokens,
        )
    entry = table["tasks"][task]
    if "examples_per_language" in entry:
        examples = sum(_limited(n, limit) for n in entry["examples_per_language"].values())
    else:
        examples = _limited(entry["examples"], limit)
    if entry["kind"] == GENERATE:
        shape = (1, entry["prompt_tokens"], entry["generated_tokens"])
    else:
        shape = (entry["choices"], entry["input_tokens"], entry["target_tokens"])
    return typical_workload(task, entry["kind"], examples, *shape, max_new_tokens)


def measured_workload(
    task_name: str,
    data_dir: str,
    tokenizer: Tokenizer,
    *,
    limit: int | None = None,
    max_new_tokens: int = harness.DEFAULT_MAX_NEW_TOKENS,
    choice_mode: str = "denoise",
) -> TaskWorkload:
    """Task `task_name` on its evaluation split in `data_dir`, its prompts (default shots) or
    choice pairs built as `alexatm-eval` builds them and counted with `tokenizer.encode`.
    A generation row's expected output is its first reference's encoding (an empty one when
    there is none), capped at max_new_tokens. FileNotFoundError when the data is absent."""
    task = harness.get_task(task_name)
    length = functools.cache(lambda text: len(tokenizer.encode(text)))
    if isinstance(task, ChoiceTask):
        items = task.items(data_dir, task.split, limit)
        pairs = harness.choice_pairs(items, choice_mode)
        inputs = tuple(length(i) for i, _ in pairs)
        outputs = tuple(length(t) for _, t in pairs)
        return TaskWorkload(task.name, SCORE, len(items), inputs, outputs, max_new_tokens, MEASURED)
    shots = harness.resolve_shots(task, None)
    generation = task.items(data_dir, task.split, tokenizer, shots, limit)
    inputs = tuple(length(i.prompt) for i in generation)
    outputs = tuple(
        min(length(i.references[0] if i.references else ""), max_new_tokens) for i in generation
    )
    return TaskWorkload(
        task.name, GENERATE, len(generation), inputs, outputs, max_new_tokens, MEASURED
    )


def suite_workloads(
    tasks: Sequence[str],
    data_dir: str | None = None,
    tokenizer: Tokenizer | None = None,
    *,
    limit: int | None = None,
    max_new_tokens: int = harness.DEFAULT_MAX_NEW_TOKENS,
    choice_mode: str = "denoise",
    note: Callable[[str], None] = logging.warning,
) -> list[TaskWorkload]:
    """Each of `tasks`, measured where `data_dir` (with `tokenizer`) holds its data, else from
    the paper defaults (each such task is noted, as is a non-default choice mode that the
    defaults do not model)."""
    if data_dir is not None and tokenizer is None:
        raise ValueError("measuring a suite's data needs the tokenizer that encodes it")
    table = paper_table()
    workloads = []
    for name in tasks:
        if data_dir is not None:
            try:
                workloads.append(
                    measured_workload(
                        name,
                        data_dir,
                        tokenizer,
                        limit=limit,
                        max_new_tokens=max_new_tokens,
                        choice_mode=choice_mode,
                    )
                )
                continue
            except FileNotFoundError as e:
                note(f"{name}: no data ({e}); taking the paper's set size and typical lengths")
        workload = paper_workload(name, max_new_tokens=max_new_tokens, limit=limit, table=table)
        if workload.kind == SCORE and choice_mode != "denoise":
            note(f"{name}: the paper defaults give 'denoise' lengths, not {choice_mode!r} ones")
        workloads.append(workload)
    return workloads
