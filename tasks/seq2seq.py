"""Seq2seq SeqIO tasks from a user's input -> target pairs, for fine-tuning (`Seq2SeqTask`).

One gin binding, `Seq2SeqTask.data = 'DIR'` (or `'tfds:NAME[:VERSION]'`), makes the task
`Seq2SeqTask.name` (default `finetune`) with a `train` and a `validation` split; gin/runs/
finetune.gin trains on it and scores its validation split with its metric. Sources:

Files may be local or on `gs://` (read through tf.io.gfile).

- JSONL: `DIR/{split}*.jsonl` (or `.jsonl.gz`), one object per line with string fields
  `input_field` / `target_field` (default `input` / `target`);
- HuggingFace `datasets` files on disk, read with pyarrow (no download, no `datasets` package):
  `DIR/{split}*.parquet`, `DIR/{split}*.arrow` / `DIR/{split}/*.arrow` (`save_to_disk`),
  `DIR/data/{split}-*.parquet` (a hub snapshot), `DIR/{split}*.json` (JSON lines);
- TFDS: `tfds:NAME[:VERSION]`, splits `train_split` / `validation_split` of the builder.

Encoding: the input passes through `prompt` (a `str.format` template with `{input}`, e.g. the
paper's few-shot formats, docs/paper_facts.md), then both texts are tokenized; with a release
vocabulary (one with a `<s>` piece) both get the release's `<s> ... </s>` template
(tasks/preprocessors/release_template.py), as its fine-tuning scripts feed the released weights.
Length limits truncate (keeping `</s>`) and count the truncated records (`truncated_inputs`,
`truncated_targets`); a record missing a field or not JSON is skipped and counted
(`invalid_jsonl_records`); bad UTF-8 is replaced and counted (`invalid_utf8_documents`).
Nothing fails on bad data. Packing on or off is the feature converter's (tasks/dataset.py).

`mix_with` ({task or mixture: rate}) also registers `<name>_mix`, the task (at `rate`) mixed
with other registered data, e.g. the pretraining mixture against forgetting.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
from collections.abc import Iterator, Mapping, Sequence

import seqio
import tensorflow as tf

import gin
from tasks import counters as counter_names
from tasks.counters import ScopedCounters, record_key
from tasks.vocabularies import make_vocabulary, special_ids

TFDS_PREFIX = "tfds:"
TRUNCATED_INPUTS = "truncated_inputs"
TRUNCATED_TARGETS = "truncated_targets"
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")
METRICS = ("bleu", "chrf", "rouge", "exact_match", "accuracy")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Seq2SeqTask:
    """A fine-tuning task over input -> target pairs (see the module docstring).

    data: a directory of split files, or 'tfds:NAME[:VERSION]'; None registers nothing.
    name: the SeqIO task name (the mixture name `train.mixture` uses).
    input_field / target_field: the record fields holding the two texts.
    prompt: template for the input text, `{input}` replaced by the field's text.
    metric: the validation metric, one of METRICS (alexatm_jax/evaluation/task_metrics.py).
    train_split / validation_split: split names of the source (file prefixes or TFDS splits).
    mix_with / rate: other tasks or mixtures with their rates, and this task's rate, for the
      mixture `<name>_mix`.
    tfds_data_dir: TFDS data directory (None: TFDS's default).
    """

    data: str | None = None
    name: str = "finetune"
    input_field: str = "input"
    target_field: str = "target"
    prompt: str = "{input}"
    metric: str = "bleu"
    train_split: str = "train"
    validation_split: str = "validation"
    mix_with: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rate: float = 1.0
    tfds_data_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix_with", dict(self.mix_with))
        problems = []
        if self.metric not in METRICS:
            problems.append(f"metric must be one of {METRICS}, got {self.metric!r}")
        if "{input}" not in self.prompt:
            problems.append(f"prompt must contain '{{input}}', got {self.prompt!r}")
        if self.rate <= 0 or any(rate <= 0 for rate in self.mix_with.values()):
            problems.append(f"rates must be > 0, got {self.rate} and {self.mix_with}")
        if problems:
            raise ValueError("Invalid Seq2SeqTask: " + "; ".join(problems))

    @property
    def mixture_name(self) -> str:
        """The name of the task mixed with `mix_with`."""
        return f"{self.name}_mix"

    @property
    def is_tfds(self) -> bool:
        """Whether `data` names a TFDS dataset."""
        return bool(self.data) and self.data.startswith(TFDS_PREFIX)


def split_files(data: str, split: str) -> list[str]:
    """The files of `split` under the directory `data`, local or `gs://` (sorted; see the module
    docstring)."""
    patterns = [f"{split}*{suffix}" for suffix in FILE_SUFFIXES]
    patterns += [f"{split}/*.arrow", f"{split}/*.parquet", f"data/{split}-*.parquet"]
    found = {path for pattern in patterns for path in tf.io.gfile.glob(os.path.join(data, pattern))}
    return sorted(path for path in found if path.endswith(FILE_SUFFIXES))


def _records(path: str, counters: ScopedCounters) -> Iterator[tuple[int, object]]:
    """(line or row number, record) of one file; JSON lines that do not parse are counted."""
    if path.endswith((".parquet", ".arrow")):
        yield from enumerate(_arrow_table(path).to_pylist())
        return
    with tf.io.gfile.GFile(path, "rb") as stored:
        f = gzip.GzipFile(fileobj=stored) if path.endswith(".gz") else stored
        for number, raw in enumerate(f):
            text = raw.decode("utf-8", "replace")
            if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
                counters.record(counter_names.INVALID_UTF8, (path, number), 1)
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError:
                counters.record(counter_names.INVALID_JSON, (path, number), 1)


def _arrow_table(path: str):
    """A pyarrow table of a parquet file or an Arrow IPC file/stream (`datasets` writes streams)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tf.io.gfile.GFile(path, "rb") as f:
        source = pa.BufferReader(f.read())
    if path.endswith(".parquet"):
        return pq.read_table(source)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def _pairs(task: Seq2SeqTask, files: Sequence[str], counters: ScopedCounters) -> Iterator[dict]:
    """{'inputs', 'targets'} texts of every usable record of `files`, in file order."""
    for path in files:
        for number, record in _records(path, counters):
            fields = (
                record.get(task.input_field) if isinstance(record, dict) else None,
                record.get(task.target_field) if isinstance(record, dict) else None,
            )
            if not all(isinstance(value, str) for value in fields):
                counters.record(counter_names.INVALID_JSON, (path, number), 1)
                continue
            yield {"inputs": task.prompt.format(input=fields[0]), "targets": fields[1]}


def _file_source(task: Seq2SeqTask, counters: ScopedCounters) -> seqio.DataSource:
    splits = {"train": task.train_split, "validation": task.validation_split}
    files = {split: split_files(task.data, name) for split, name in splits.items()}
    missing = [f"{splits[s]} ({s})" for s, paths in files.items() if not paths]
    if missing:
        raise FileNotFoundError(
            f"Seq2SeqTask.data={task.data!r} has no files for the split(s) {', '.join(missing)}: "
            f"expected {{split}}*.jsonl[.gz] / .json / .parquet / .arrow there"
        )
    counters.declare(counter_names.INVALID_JSON, counter_names.INVALID_UTF8)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # record order is fixed; the task shuffles examples
        paths = tuple(files[split])
        return tf.data.Dataset.from_generator(
            lambda: _pairs(task, paths, counters),
            output_signature={
                "inputs": tf.TensorSpec([], tf.string),
                "targets": tf.TensorSpec([], tf.string),
            },
        )

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(splits))


def _tfds_source(task: Seq2SeqTask) -> seqio.DataSource:
    return seqio.TfdsDataSource(
        tfds_name=task.data[len(TFDS_PREFIX) :],
        tfds_data_dir=task.tfds_data_dir,
        splits={"train": task.train_split, "validation": task.validation_split},
    )


def _tfds_fields(ds: tf.data.Dataset, task: Seq2SeqTask) -> tf.data.Dataset:
    """TFDS records -> {'inputs', 'targets'} texts with the prompt applied."""
    before, after = task.prompt.split("{input}", 1)

    def pick(ex):
        text = tf.strings.join([before, ex[task.input_field], after])
        return {"inputs": text, "targets": ex[task.target_field]}

    return ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)


def _template_and_truncate(
    ds: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    *,
    bos_id: int | None,
    counters: ScopedCounters,
) -> tf.data.Dataset:
    """`<s>` before inputs and targets (release vocabularies), then each cut to its length less
    one (the `</s>` SeqIO appends), counting each truncated record once."""
    counters.declare(TRUNCATED_INPUTS, TRUNCATED_TARGETS)
    marker = [] if bos_id is None else [bos_id]

    @tf.autograph.experimental.do_not_convert
    def cut(ex):
        out = dict(ex)
        updates = []
        for name, counter in (("inputs", TRUNCATED_INPUTS), ("targets", TRUNCATED_TARGETS)):
            ids = tf.concat([tf.constant(marker, ex[name].dtype), ex[name]], axis=0)
            if sequence_length and sequence_length.get(name):
                limit = int(sequence_length[name]) - 1
                key = record_key(ex[f"{name}_pretokenized"])
                updates.append(counters.add(counter, tf.size(ids) > limit, key=key))
                ids = ids[:limit]
            out[name] = ids
        with tf.control_dependencies(updates):
            return {name: tf.identity(value) for name, value in out.items()}

    return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE)


def _info_features(ds: tf.data.Dataset, *, name: str) -> tf.data.Dataset:
    """The descriptive features pretraining examples carry (tasks/pretraining.py INFO_FEATURES),
    so that `alexatm-inspect` shows the pairs and mixtures with pretraining data pass them on:
    objective `seq2seq`, the task as source, no deleted tokens, no CLM split."""

    def add(ex):
        return {
            **ex,
            "objective": tf.constant("seq2seq"),
            "language": tf.constant(""),
            "source": tf.constant(name),
            "noise_mask": tf.zeros_like(ex["targets"]),
            "clm_document_length": tf.constant(0, tf.int32),
            "clm_split_point": tf.constant(0, tf.int32),
        }

    return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _metric_fn(metric: str):
    from alexatm_jax.evaluation.task_metrics import score

    return functools.partial(score, metric)


def make_task(task: Seq2SeqTask, vocab_path: str | None) -> seqio.Task:
    """The SeqIO task of `task` (not registered) over the vocabulary at `vocab_path`."""
    counters = ScopedCounters(task.name)
    vocabulary = make_vocabulary(vocab_path)
    steps = []
    if task.is_tfds:
        source = _tfds_source(task)
        steps.append(functools.partial(_tfds_fields, task=task))
    else:
        source = _file_source(task, counters)
    steps += [
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
        functools.partial(
            _template_and_truncate, bos_id=special_ids(vocabulary).bos, counters=counters
        ),
        seqio.preprocessors.append_eos_after_trim,
        functools.partial(_info_features, name=task.name),
    ]
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True, required=True),
    }
    return seqio.Task(
        task.name,
        source,
        output_features=features,
        preprocessors=steps,
        metric_fns=[_metric_fn(task.metric)],
    )


_registered: dict[str, object] = {}  # task name -> the registration key in effect


def register_seq2seq_task(task: Seq2SeqTask, vocab_path: str | None = None) -> str:
    """Registers `task` (and `<name>_mix` when it has `mix_with`) in SeqIO, replacing an earlier
    registration of the same name; does nothing when already registered identically. Returns the
    name to train on: the mixture when there is one, else the task."""
    key = (task, vocab_path)
    if _registered.get(task.name) != key:
        seqio.TaskRegistry.remove(task.name)
        seqio.TaskRegistry.add_provider(task.name, make_task(task, vocab_path))
        seqio.MixtureRegistry.remove(task.mixture_name)
        if task.mix_with:
            seqio.MixtureRegistry.add(
                task.mixture_name, [(task.name, task.rate), *task.mix_with.items()]
            )
        _registered[task.name] = key
    return task.mixture_name if task.mix_with else task.name


def register_from_gin(vocab_path: str | None = None) -> str | None:
    """Registers the gin-configured `Seq2SeqTask` when its `data` is set; returns its train name
    (None when no data is bound)."""
    task = Seq2SeqTask()
    return register_seq2seq_task(task, vocab_path) if task.data else None


def task_metric(name: str) -> str:
    """The metric of the registered seq2seq task `name` (a task or its `_mix` mixture)."""
    for task_name, (task, _) in _registered.items():
        if name in (task_name, task.mixture_name):
            return task.metric
    raise KeyError(f"{name!r} is not a registered seq2seq task")
