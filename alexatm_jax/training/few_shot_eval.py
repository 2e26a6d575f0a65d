"""Few-shot evaluation during training: the paper's evaluation tasks, as `alexatm-eval` runs
them (same prompts, shots, decoding and metrics; alexatm_jax/evaluation/harness.py), on the live
parameters of the training job.

`FewShotEval` is an evaluation hook (`train.eval_hooks`, alexatm_jax/training/eval_hooks.py). It
runs on the training mesh and its partitioner, in the training process, with nothing written to
disk, every `period` steps (a multiple of `eval_period`). It logs `eval/<task>/<metric>` to
metrics.jsonl and TensorBoard. It reads the parameters and never changes them, so the training
losses with it are those without it (tests/test_few_shot_eval.py).

    train.eval_hooks = [@FewShotEval()]
    FewShotEval.tasks = ['xsum', 'copa']       # task or suite names, as alexatm-eval takes them
    FewShotEval.data_dir = 'gs://bucket/eval'  # alexatm-eval's --data_dir layout
    FewShotEval.limit = 64                     # the first examples of each task's eval split
    FewShotEval.period = 5000                  # steps
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from alexatm_jax.training.eval_hooks import EvalContext

PREFIX = "eval"


def expand_tasks(names: Sequence[str]) -> tuple[str, ...]:
    """Task names with suite names replaced by their tasks (in order, each once); ValueError
    naming an unknown name and the known ones."""
    from alexatm_jax.evaluation.harness import get_task
    from alexatm_jax.evaluation.suites import SUITES

    tasks: list[str] = []
    for name in names:
        for task in SUITES.get(name, (name,)):
            get_task(task)  # raises for an unknown name
            if task not in tasks:
                tasks.append(task)
    return tuple(tasks)


def flat_metrics(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric values of `metrics` (nested dicts flattened with '/') under `prefix`."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flat_metrics(f"{prefix}/{key}", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = float(value)
    return flat


@dataclasses.dataclass
class FewShotEval:
    """The first `limit` examples of each of `tasks` (task or suite names) from `data_dir`,
    scored every `period` steps (0: every `eval_period`) with greedy decoding of at most
    `max_new_tokens` tokens, `batch_size` rows per call, each task's default shot count unless
    `shots` is given. `main_metric` (e.g. 'eval/xsum/rouge2') is what `train.keep_best`
    maximises when this is the first hook."""

    tasks: Sequence[str] = ()
    data_dir: str | None = None
    limit: int = 64
    period: int = 0
    shots: int | None = None
    max_new_tokens: int = 63
    batch_size: int = 8
    main_metric: str = ""
    name: str = PREFIX
    _tokenizer: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.tasks:
            problems.append("tasks is empty: name tasks or suites, e.g. ['xsum', 'superglue']")
        if not self.data_dir:
            problems.append("data_dir is required (alexatm-eval's --data_dir layout)")
        if min(self.limit, self.max_new_tokens, self.batch_size) < 1 or self.period < 0:
            problems.append(
                "limit, max_new_tokens and batch_size must be >= 1 and period >= 0, got "
                f"{self.limit}, {self.max_new_tokens}, {self.batch_size}, {self.period}"
            )
        if problems:
            raise ValueError("Invalid FewShotEval: " + "; ".join(problems))
        self.tasks = expand_tasks(self.tasks)

    def due(self, step: int) -> bool:
        """Whether this evaluation runs at `step` (an evaluation step of the run)."""
        return not self.period or step % self.period == 0

    def __call__(self, context: EvalContext) -> dict[str, float]:
        from alexatm_jax.decoding.text import TextModel
        from alexatm_jax.evaluation.harness import default_options, evaluate, get_task
        from alexatm_jax.evaluation.suites import task_directory
        from alexatm_jax.tokenization import Tokenizer

        if context.vocab_path is None:
            raise ValueError("FewShotEval needs the run's tokenizer (train.vocab_path)")
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(context.vocab_path)
        model = TextModel(context.engine(self.batch_size), self._tokenizer)
        options = default_options(model, self.max_new_tokens)
        record: dict[str, float] = {}
        for task in self.tasks:
            result = evaluate(
                get_task(task),
                model,
                self.data_dir,
                shots=self.shots,
                limit=self.limit,
                options=options,
            )
            record.update(flat_metrics(f"{self.name}/{task_directory(task)}", result.metrics))
        return record
