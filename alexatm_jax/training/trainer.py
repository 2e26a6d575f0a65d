"""The training run: `train(config)` for a `TrainConfig` (gin binds it as `train.*`,
`gin/runs/pretrain.gin`), run by alexatm-train.

Start-up precedence (T5X lesson: "resume" and "initialise from" are separate and explicit):
1. MODEL_DIR has a readable checkpoint -> resume it exactly (state, data position, step);
   `init_from` is then ignored (a message says so). A MODEL_DIR of another architecture is refused.
2. else `init_from` is set -> fresh run at step 0 whose parameters (or the subtrees named by
   `init_from_prefixes`) come from that model checkpoint or training MODEL_DIR.
3. else -> fresh run from random parameters (seed).

Nothing is written to MODEL_DIR until the launch is known to be sound
(alexatm_jax/training/startup.py): arguments, MODEL_DIR (a writable directory), the
architecture, the vocabulary and the data directory are checked first, so a refused launch
(InvalidTrainArguments, ArchitectureMismatchError) leaves it untouched.
When MODEL_DIR holds checkpoints but none is intact (all unreadable or failing their digests),
the run stops (NoReadableCheckpointError) unless `on_unreadable='restart'`, which starts at step 0
after rotating the old metrics aside.

Per step: one global batch, one jitted sharded step, metrics every `log_every` steps (JSONL,
TensorBoard, progress bar), evaluation every `eval_period` (on the same first `eval_steps`
batches of the held-out split each time, read once) with the `eval_hooks` (e.g. the task's metric,
alexatm_jax/training/eval_hooks.py; `keep_best` keeps the best-scoring checkpoint in
MODEL_DIR/best), a checkpoint every `checkpoint_period`
and at the end. Non-finite steps are skipped within limits (`alexatm_jax.training.nonfinite`);
the newest checkpoint from before the run's first one is never garbage-collected. A background
save that fails stops the run at the next step (CheckpointSaveError). The input pipeline's
counters of bad records are logged at start, at each evaluation and at the end.
SIGTERM/SIGINT finish the current step, save and return normally.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

import gin
from alexatm_jax.data.global_batches import GlobalBatches, per_host_batch_size
from alexatm_jax.data.sources import make_host_source
from alexatm_jax.partitioning import Partitioner
from alexatm_jax.training.checkpointing import TrainingCheckpointer
from alexatm_jax.training.config import InvalidTrainArguments, TrainConfig
from alexatm_jax.training.console import say
from alexatm_jax.training.eval_hooks import BestCheckpoint, EvalContext, run_hooks, time_shares
from alexatm_jax.training.flops import peak_flops_per_device as lookup_peak_flops
from alexatm_jax.training.flops import train_flops_per_step
from alexatm_jax.training.metrics_writer import MetricsWriter
from alexatm_jax.training.nonfinite import NonFiniteLossError, SkippedSteps
from alexatm_jax.training.preemption import StopRequest
from alexatm_jax.training.preflight import NoReadableCheckpointError
from alexatm_jax.training.startup import layout, preflight, record_run, restore_or_initialise
from alexatm_jax.training.state import TrainState
from alexatm_jax.training.step import make_eval_step, make_train_step
from alexatm_jax.training.throughput import ThroughputMeter

DATA_METRIC_PREFIX = "data/"

logger = logging.getLogger(__name__)
__all__ = [
    "InvalidTrainArguments",
    "NoReadableCheckpointError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "train",
]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a `train` call ended."""

    model_dir: str
    final_step: int
    last_checkpoint_step: int | None
    stopped_by_signal: str | None
    last_metrics: dict[str, float]
    skipped_steps: int = 0


def train(config: TrainConfig) -> TrainResult:
    """Train `config.model_config` until step `config.train_steps` in `config.model_dir`
    (resuming if possible); see the module docstring for start-up and the per-step work.

    Returns a TrainResult; raises InvalidTrainArguments / ArchitectureMismatchError before
    touching MODEL_DIR, NonFiniteLossError, NoReadableCheckpointError, CheckpointSaveError.
    """
    run = _Run.start(config)
    failed = True
    try:
        with StopRequest() as stop_request:
            for step in range(run.start_step + 1, config.train_steps + 1):
                batch = next(run.train_batches)
                if run.compiled is None:
                    run.compile(batch)
                run.state, metrics = run.compiled(run.state, batch, run.dropout_key)
                run.step = step
                run.skipped.push(step, metrics)  # acts on the previous step's flag: no wait
                run.checkpointer.poll()  # a failed background save stops the run now
                run.meter.add_step(metrics["num_target_tokens"])
                run.bar.update(1)
                evaluate = run.evaluates and step % config.eval_period == 0
                if (
                    step % config.log_every == 0
                    or step == config.train_steps
                    or step == run.start_step + 1
                    or evaluate
                ):
                    run.log(step, metrics, evaluate)
                stop_now = stop_request.should_stop()
                if step % config.checkpoint_period == 0 or step == config.train_steps or stop_now:
                    run.save(step)
                if stop_now:
                    run.stopped_by = stop_request.signal_name or "a stop request on another process"
                    break
            run.skipped.flush()
        run.checkpointer.wait_until_finished()
        failed = False
    finally:
        run.close(quietly=failed)
    return run.finish()


@dataclasses.dataclass
class _Run:
    """A training run's live objects between set-up (`start`) and `finish`."""

    config: TrainConfig
    model_dir: str
    partitioner: Partitioner
    checkpointer: TrainingCheckpointer
    state: TrainState
    start_step: int
    train_batches: GlobalBatches
    batches_for: Any
    train_step: Any
    eval_step: Any
    dropout_key: jax.Array
    meter: ThroughputMeter
    writer: MetricsWriter
    bar: Any
    skipped: SkippedSteps
    saved_steps: list[int]
    last_saved: int | None
    compiled: Any = None
    eval_batches: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)
    data_counts: dict[str, float] = dataclasses.field(default_factory=dict)
    last_record: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped_by: str | None = None
    step: int = 0
    vocab_file: str | None = None
    best: BestCheckpoint | None = None

    @classmethod
    def start(cls, config: TrainConfig) -> _Run:
        """Check the launch, then restore or initialise the state, open the data, the metrics
        and the progress bar, and build (not yet compile) the steps."""
        model_dir, vocab_file = preflight(config)
        partitioner, optimizer, target = layout(config)
        # The launch is sound: from here on MODEL_DIR is written.
        checkpointer = TrainingCheckpointer(
            model_dir, keep=config.keep_checkpoints, async_save=config.async_checkpointing
        )
        init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
        state, progress, last_saved = restore_or_initialise(
            config, model_dir, checkpointer, target, partitioner, optimizer, init_key
        )
        if jax.process_index() == 0:
            record_run(config, model_dir, vocab_file, partitioner, target)
        start_step = int(state.step)
        batches_for = _batch_reader(config, partitioner)
        writer = MetricsWriter(model_dir, enabled=jax.process_index() == 0, resume_step=start_step)
        writer.write_text("config/gin", gin.operative_config_str(), start_step)
        saved_steps = checkpointer.steps()
        run = cls(
            config=config,
            model_dir=model_dir,
            partitioner=partitioner,
            checkpointer=checkpointer,
            state=state,
            start_step=start_step,
            train_batches=batches_for("train", progress.get("data_iterator")),
            batches_for=batches_for,
            train_step=make_train_step(config, partitioner),
            eval_step=(
                make_eval_step(config.model_config, partitioner)
                if config.eval_period and config.eval_steps
                else None
            ),
            # Replicated over the whole mesh by jit: device_put cannot target the devices of
            # other processes in a multi-process run (every process holds the same key).
            dropout_key=partitioner.partition(
                lambda key: key, out_shardings=(partitioner.replicated)
            )(dropout_key),
            meter=_throughput_meter(config),
            writer=writer,
            bar=tqdm(
                total=config.train_steps,
                initial=start_step,
                desc="train",
                unit="step",
                disable=not (jax.process_index() == 0 and config.progress_bar),
                dynamic_ncols=True,
            ),
            skipped=None,
            saved_steps=saved_steps,
            last_saved=last_saved,
            step=start_step,
            vocab_file=vocab_file,
        )
        if config.keep_best:
            run.best = BestCheckpoint(
                model_dir, config.eval_hooks[0].main_metric, config.model_config, vocab_file
            )
        run.skipped = SkippedSteps(
            max_consecutive=config.max_skipped_steps,
            max_fraction=config.max_skipped_fraction,
            window=config.skipped_window,
            progress=progress,
            describe_last_good=run.describe_last_good,
            stop_at_first=config.nan_policy == "stop",
        )
        if run.skipped.first_step is not None:
            checkpointer.protect(run.last_good_checkpoint())
        return run

    def compile(self, batch: Mapping[str, jax.Array]) -> None:
        """Report the data pipeline's counters, then compile the train step for `batch`."""
        self.data_metrics("at start")
        start = time.perf_counter()
        self.compiled = self.train_step.lower(self.state, batch, self.dropout_key).compile()
        say(f"Compiled the train step in {time.perf_counter() - start:.1f} s")
        self.meter.restart()

    def log(self, step: int, metrics: Mapping[str, jax.Array], evaluate: bool) -> None:
        """Fetch `metrics`, add throughput (and an evaluation), and write them."""
        record = _fetch(metrics)
        # Every earlier step is observed already; this one is still pending.
        record["skipped_total"] = float(self.skipped.total) + record["skipped"]
        record.update(self.meter.report())
        if evaluate:
            if self.eval_step is not None:
                if not self.eval_batches:
                    source = self.batches_for(self.config.eval_split, None)
                    self.eval_batches = [next(source) for _ in range(self.config.eval_steps)]
                record.update(_evaluate(self.eval_step, self.state.params, self.eval_batches))
            record.update(run_hooks(self.config.eval_hooks, self.eval_context(step)))
            record.update(time_shares(self.config.eval_hooks, record, self.config.eval_period))
            if self.best is not None and self.best.offer(step, self.state, record):
                record["best_step"] = float(step)
            record.update(self.data_metrics(f"at step {step}"))
            self.meter.restart()
        if step == self.config.train_steps:
            record.update(self.data_metrics("at the end"))
        self.writer.write(step, record)
        self.bar.set_postfix(_postfix(record), refresh=False)
        self.last_record = record

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates every `eval_period` (held-out loss or hooks)."""
        return bool(self.config.eval_period) and (
            self.eval_step is not None or bool(self.config.eval_hooks)
        )

    def eval_context(self, step: int) -> EvalContext:
        """What the evaluation hooks see at `step`."""
        return EvalContext(
            step=step,
            model_config=self.config.model_config,
            params=self.state.params,
            partitioner=self.partitioner,
            vocab_path=self.vocab_file or self.config.vocab_path,
            data_dir=self.config.data_dir,
            sequence_length=self.config.sequence_length,
        )

    def data_metrics(self, when: str) -> dict[str, float]:
        """The input pipeline's counters as metrics, warning about those that grew."""
        previous = {k[len(DATA_METRIC_PREFIX) :]: v for k, v in self.data_counts.items()}
        report = getattr(self.train_batches.source, "pipeline_report", None)
        self.data_counts = _report_data(report() if report else None, previous, when)
        return self.data_counts

    def save(self, step: int) -> None:
        """Checkpoint `step`, protecting the last good checkpoint once a step was skipped."""
        self.skipped.flush()
        if self.skipped.first_step is not None and self.checkpointer.protected_step is None:
            self.checkpointer.protect(self.last_good_checkpoint())
        self.checkpointer.save(
            step,
            self.state,
            {"data_iterator": self.train_batches.state(), **self.skipped.progress()},
        )
        self.saved_steps.append(step)
        self.writer.sync()  # a remote MODEL_DIR gets the staged metrics/TensorBoard files
        self.last_saved = step

    def last_good_checkpoint(self) -> int | None:
        """The newest checkpoint saved before the run's first non-finite step (all when none)."""
        first = self.skipped.first_step
        before = [s for s in self.saved_steps if first is None or s < first]
        return before[-1] if before else None

    def describe_last_good(self) -> str:
        """Where the last good checkpoint is, for the error that stops a diverging run."""
        good, first = self.last_good_checkpoint(), self.skipped.first_step
        if good is None:
            return (
                f"No checkpoint was saved before the first non-finite step ({first}); "
                f"checkpoints in {self.checkpointer.directory}: "
                f"{self.checkpointer.steps() or 'none'}"
            )
        return (
            f"Last good checkpoint: step {good} in {self.checkpointer.directory} (the newest "
            f"saved before the first non-finite step, {first})"
        )

    def close(self, *, quietly: bool) -> None:
        """Close the progress bar, the checkpointer and the metrics writer."""
        self.bar.close()
        try:
            _close(self.checkpointer, quietly=quietly)
            if self.best is not None:
                _close(self.best, quietly=quietly)
        finally:
            _close(self.writer, quietly=quietly)

    def finish(self) -> TrainResult:
        """Say how the run ended and where its outputs are."""
        if self.stopped_by:
            say(f"Stopped by {self.stopped_by} after step {self.step}; checkpoint saved.")
        if self.skipped.summary():
            say(self.skipped.summary())
        say(
            f"Model dir: {self.model_dir}\n  checkpoints: {self.checkpointer.directory} (latest "
            f"step {self.last_saved})\n  metrics: {self.writer.jsonl_path}\n  TensorBoard: "
            f"tensorboard --logdir {self.writer.tensorboard_dir}"
        )
        return TrainResult(
            model_dir=self.model_dir,
            final_step=self.step,
            last_checkpoint_step=self.last_saved,
            stopped_by_signal=self.stopped_by,
            last_metrics=self.last_record,
            skipped_steps=self.skipped.total,
        )


def _batch_reader(config: TrainConfig, partitioner: Partitioner) -> Any:
    """batches_for(split, resume_state) -> GlobalBatches of this process's shard of `split`."""
    shard_index, num_shards = partitioner.data_shard_info()
    host_batch = per_host_batch_size(config.batch_size, partitioner)
    model_config = config.model_config

    def batches_for(split: str, resume: Mapping[str, Any] | None) -> GlobalBatches:
        source = make_host_source(
            config.data_source,
            mixture=config.mixture,
            split=split,
            sequence_length=config.sequence_length,
            seed=config.seed,
            shard_index=shard_index,
            num_shards=num_shards,
            per_host_batch_size=host_batch,
            vocab_size=model_config.vocab_size,
            decoder_start_token_id=model_config.decoder_start_token_id,
            data_dir=config.data_dir,
            vocab_path=config.vocab_path,
            pack=config.pack,
            repeat=True,
            resume_state=resume,
            resume_mode=config.data_resume,
            prepared_data=config.prepared_data,
        )
        return GlobalBatches(source, partitioner)

    return batches_for


def _throughput_meter(config: TrainConfig) -> ThroughputMeter:
    """Tokens/s and MFU of the run (MFU only where the chip's peak FLOP/s is known)."""
    model_config, lengths = config.model_config, config.sequence_length
    peak = config.peak_flops_per_device or lookup_peak_flops(
        jax.devices()[0].device_kind, "bfloat16" if model_config.dtype == "bfloat16" else "float32"
    )
    return ThroughputMeter(
        positions_per_step=config.positions_per_step,
        flops_per_step=train_flops_per_step(
            model_config, config.batch_size, lengths["inputs"], lengths["targets"]
        ),
        num_devices=jax.device_count(),
        peak_flops_per_device=peak,
    )


def _report_data(
    report: tuple[dict[str, int], dict[str, str]] | None, previous: Mapping[str, int], when: str
) -> dict[str, float]:
    """Warn about input-pipeline counters that grew since `previous` (naming skipped files);
    returns the counters as metrics ({} for a source without counters)."""
    if report is None:
        return {}
    counts, bad_files = report
    grown = {
        name: value
        for name, value in counts.items()
        if name != "documents" and value > previous.get(name, 0)
    }
    if grown:
        logger.warning(
            "data pipeline %s: %s (distinct bad records, each counted once however "
            "often it is re-read; see docs/data.md#bad-input)%s",
            when,
            ", ".join(f"{name}={value}" for name, value in grown.items()),
            "".join(f"\n  skipped {path}: {why}" for path, why in bad_files.items())
            if "bad_files" in grown
            else "",
        )
    return {DATA_METRIC_PREFIX + name: float(value) for name, value in counts.items()}


def _fetch(tree: Mapping[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(dict(tree)).items()}


def _evaluate(eval_step: Any, params: Any, batches: list[dict[str, jax.Array]]) -> dict:
    """Token-weighted loss and accuracy over `batches` (keys eval_loss / eval_accuracy)."""
    loss_sum = correct = tokens = jnp.zeros([], jnp.float32)
    for batch in batches:
        metrics = eval_step(params, batch)
        loss_sum += metrics["loss_sum"]
        correct += metrics["correct_tokens"]
        tokens += metrics["num_target_tokens"]
    totals = _fetch({"loss_sum": loss_sum, "correct": correct, "tokens": tokens})
    denominator = max(totals["tokens"], 1.0)
    return {
        "eval_loss": totals["loss_sum"] / denominator,
        "eval_accuracy": totals["correct"] / denominator,
    }


def _close(resource: Any, *, quietly: bool) -> None:
    """`resource.close()`; when the run already failed, an error here (e.g. the disk is still
    full) is only logged, so that the first error is the one reported."""
    try:
        resource.close()
    except Exception as error:  # noqa: BLE001 - re-raised unless another error is in flight
        if not quietly:
            raise
        logger.warning("while stopping after an error: %s", error)


def _postfix(record: Mapping[str, float]) -> dict[str, str]:
    out = {"loss": f"{record['loss']:.3f}"}
    if "tokens_per_s" in record:
        out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "mfu" in record:
        out["mfu"] = f"{100 * record['mfu']:.1f}%"
    return out
