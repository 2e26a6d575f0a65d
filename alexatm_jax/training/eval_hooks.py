"""Evaluation during training: hooks the trainer runs every `eval_period` beside the held-out
loss (`train.eval_hooks`), and the best-checkpoint bookkeeping of `train.keep_best`.

A hook is any object with a `name` (the prefix of its metrics), a `main_metric` (the key that
`keep_best` maximises) and `__call__(context) -> {metric: value}`; it gets the live parameters
through `EvalContext` and must not change them. `TaskMetricEval` is the one for fine-tuning: it
decodes the first `max_examples` inputs of a SeqIO task's validation split greedily and scores
the texts with the task's metric (BLEU/chrF, ROUGE, exact match, accuracy;
alexatm_jax/evaluation/task_metrics.py). `FewShotEval` (alexatm_jax/training/few_shot_eval.py)
runs the paper's evaluation tasks during pretraining through the same `run_hooks`. A hook with a
`due(step)` method runs only at the evaluation steps it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax

from alexatm_jax.model import ModelConfig

BEST_DIR = "best"
BEST_RECORD = "best.json"


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What a hook may use: the step, the model and its parameters (sharded by `partitioner`),
    and the run's data settings (`vocab_path`, `data_dir`, `sequence_length` in tokens)."""

    step: int
    model_config: ModelConfig
    params: Any
    partitioner: Any
    vocab_path: str | None
    data_dir: str | None
    sequence_length: Mapping[str, int]

    def engine(self, batch_size: int) -> Any:
        """An InferenceEngine over the live parameters on the training mesh, decoding
        `batch_size` rows per call (rounded up to a multiple of the batch shards)."""
        from alexatm_jax.decoding.engine import InferenceEngine

        shards = getattr(self.partitioner, "num_batch_shards", 1) if self.partitioner else 1
        return InferenceEngine(
            self.model_config,
            self.params,
            partitioner=self.partitioner,
            batch_size=-(-batch_size // shards) * shards,
        )


class EvalHook(Protocol):
    """An evaluation run every `eval_period` steps."""

    name: str
    main_metric: str

    def __call__(self, context: EvalContext) -> dict[str, float]: ...


@dataclasses.dataclass
class TaskMetricEval:
    """A SeqIO task's metric on its `split`: greedy decoding of up to `max_examples` inputs
    (read once, in order), at most `max_new_tokens` tokens each, `batch_size` rows per call.

    metric: a task_metrics name; None takes the registered seq2seq task's own (tasks/seq2seq.py).
    Metrics are logged as `<name>/<key>` (name default `eval_<task>`), e.g. `eval_finetune/bleu`.
    """

    task: str = "finetune"
    split: str = "validation"
    metric: str | None = None
    max_examples: int = 256
    max_new_tokens: int = 128
    batch_size: int = 8
    name: str = ""
    _examples: tuple[list[list[int]], list[str], Any] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.name = self.name or f"eval_{self.task}"
        if min(self.max_examples, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError(
                "TaskMetricEval needs max_examples, max_new_tokens and batch_size >= 1, got "
                f"{self.max_examples}, {self.max_new_tokens}, {self.batch_size}"
            )

    @property
    def metric_name(self) -> str:
        """The metric in use (the task's own when `metric` is None)."""
        if self.metric:
            return self.metric
        from tasks.seq2seq import task_metric

        return task_metric(self.task)

    @property
    def main_metric(self) -> str:
        """The key `keep_best` maximises, e.g. `eval_finetune/bleu`."""
        from alexatm_jax.evaluation.task_metrics import MAIN_KEY

        return f"{self.name}/{MAIN_KEY[self.metric_name]}"

    def examples(self, context: EvalContext) -> tuple[list[list[int]], list[str], Any]:
        """(encoded inputs, reference texts, the seqio vocabulary) of the split, read on the
        first call."""
        if self._examples is None:
            import seqio

            import tasks

            ds = tasks.get_dataset(
                self.task,
                sequence_length=context.sequence_length,
                split=self.split,
                data_dir=context.data_dir,
                vocab_path=context.vocab_path,
                feature_converter=False,
                shuffle=False,
                num_epochs=1,
            )
            provider = seqio.get_mixture_or_task(self.task)
            vocabulary = provider.output_features["targets"].vocabulary
            inputs, references = [], []
            for example in ds.take(self.max_examples).as_numpy_iterator():
                inputs.append([int(t) for t in example["inputs"]])
                # The reference text as written (not cut to the target length), when the task
                # keeps it; else the target tokens decoded.
                text = example.get("targets_pretokenized")
                references.append(
                    text.decode("utf-8")
                    if text is not None
                    else vocabulary.decode([int(t) for t in example["targets"]])
                )
            self._examples = (inputs, references, vocabulary)
        return self._examples

    def __call__(self, context: EvalContext) -> dict[str, float]:
        from alexatm_jax.decoding.options import DecodeOptions
        from alexatm_jax.evaluation.task_metrics import score

        inputs, references, vocabulary = self.examples(context)
        engine = context.engine(self.batch_size)
        generated = engine.generate_ids(inputs, DecodeOptions(max_new_tokens=self.max_new_tokens))
        predictions = [vocabulary.decode(g.token_ids) for g in generated]
        scores = score(self.metric_name, references, predictions)
        return {f"{self.name}/{key}": float(value) for key, value in scores.items()}


def run_hooks(hooks: Sequence[EvalHook], context: EvalContext) -> dict[str, float]:
    """Every due hook's metrics, plus `<name>/seconds` each took."""
    record: dict[str, float] = {}
    for hook in hooks:
        if not getattr(hook, "due", lambda step: True)(context.step):
            continue
        start = time.perf_counter()
        record.update(hook(context))
        record[f"{hook.name}/seconds"] = time.perf_counter() - start
    return record


def time_shares(
    hooks: Sequence[EvalHook], record: Mapping[str, float], eval_period: int
) -> dict[str, float]:
    """`<name>/share_of_time` for each hook that ran in `record`: its seconds over its seconds
    plus the training time of its period (its `period`, else `eval_period`, times the record's
    `step_time_s`), the share of the run's wall time that the hook costs at that period."""
    shares = {}
    step_seconds = record.get("step_time_s")
    for hook in hooks:
        seconds = record.get(f"{hook.name}/seconds")
        if seconds is None or not step_seconds:
            continue
        period = getattr(hook, "period", 0) or eval_period
        shares[f"{hook.name}/share_of_time"] = seconds / (seconds + period * step_seconds)
    return shares


@dataclasses.dataclass
class BestTracker:
    """The best value of one metric so far (higher is better), persisted in MODEL_DIR/best.json
    so that a resumed run keeps comparing against it."""

    key: str
    best: float = -math.inf
    step: int | None = None

    @classmethod
    def load(cls, key: str, record_text: str | None) -> BestTracker:
        """The tracker for `key`, from the text of best.json when there is one for `key`."""
        if record_text:
            record = json.loads(record_text)
            if record.get("metric") == key:
                return cls(key, float(record["value"]), int(record["step"]))
        return cls(key)

    def improves(self, record: Mapping[str, float]) -> bool:
        """Whether `record[key]` beats the best so far (a missing or NaN value never does)."""
        value = record.get(self.key)
        return value is not None and not math.isnan(value) and value > self.best

    def update(self, step: int, record: Mapping[str, float]) -> str:
        """Take `record[key]` at `step` as the new best; returns best.json's text."""
        self.best, self.step = float(record[self.key]), step
        return json.dumps({"metric": self.key, "value": self.best, "step": step}) + "\n"


class BestCheckpoint:
    """`train.keep_best`: MODEL_DIR/best is a training MODEL_DIR holding the one checkpoint whose
    evaluation scored best on `key` so far (model_config.json, tokenizer/, checkpoints/<step>,
    best.json with the metric, its value and the step). `alexatm_jax.load`, alexatm-eval and
    `train.init_from` read it like any MODEL_DIR. Local or remote (alexatm_jax/storage.py)."""

    def __init__(
        self, model_dir: str, key: str, model_config: ModelConfig, vocab_file: str | None
    ) -> None:
        from alexatm_jax.storage import as_path, copy_file
        from alexatm_jax.training.checkpointing import TrainingCheckpointer
        from alexatm_jax.training.model_dir import TOKENIZER_DIR, write_model_config

        self.directory = as_path(model_dir) / BEST_DIR
        if jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_model_config(str(self.directory), model_config)
            if vocab_file:
                (self.directory / TOKENIZER_DIR).mkdir(exist_ok=True)
                copy_file(vocab_file, self.directory / TOKENIZER_DIR / vocab_file.split("/")[-1])
        record = self.directory / BEST_RECORD
        self.tracker = BestTracker.load(key, record.read_text() if record.exists() else None)
        self._checkpointer = TrainingCheckpointer(str(self.directory), keep=1, async_save=False)

    def offer(self, step: int, state: Any, record: Mapping[str, float]) -> bool:
        """Save `state` as the best checkpoint when `record` beats the best so far; returns
        whether it did."""
        if not self.tracker.improves(record):
            return False
        text = self.tracker.update(step, record)
        self._checkpointer.save(step, state, {"best": json.loads(text)})
        self._checkpointer.wait_until_finished()
        if jax.process_index() == 0:
            (self.directory / BEST_RECORD).write_text(text)
        return True

    def close(self) -> None:
        """Wait for the last save and release the checkpointer."""
        self._checkpointer.close()
