"""The training run: `train(...)`, bound by gin (`gin/runs/pretrain.gin`) and run by alexatm-train.

Start-up precedence (T5X lesson: "resume" and "initialise from" are separate and explicit):
1. MODEL_DIR has a readable checkpoint -> resume it exactly (state, data position, step);
   `init_from` is then ignored (a message says so). A MODEL_DIR of another architecture is refused.
2. else `init_from` is set -> fresh run at step 0 whose parameters (or the subtrees named by
   `init_from_prefixes`) come from that model checkpoint or training MODEL_DIR.
3. else -> fresh run from random parameters (seed).

Nothing is written to MODEL_DIR until the launch is known to be sound: arguments, MODEL_DIR
(a writable directory), the architecture, the vocabulary and the data directory are checked
first, so a refused launch (InvalidTrainArguments, ArchitectureMismatchError) leaves it untouched.
When MODEL_DIR holds checkpoints but none is intact (all unreadable or failing their digests),
the run stops (NoReadableCheckpointError) unless `on_unreadable='restart'`, which starts at step 0
after rotating the old metrics aside.

Per step: one global batch, one jitted sharded step, metrics every `log_every` steps (JSONL,
TensorBoard, progress bar), evaluation every `eval_period` (on the same first `eval_steps`
batches of the held-out split each time, read once), a checkpoint every `checkpoint_period`
and at the end. Non-finite steps are skipped within limits (`alexatm_jax.training.nonfinite`);
the newest checkpoint from before the run's first one is never garbage-collected. A background
save that fails stops the run at the next step (CheckpointSaveError). The input pipeline's
counters of bad records are logged at start, at each evaluation and at the end.
SIGTERM/SIGINT finish the current step, save and return normally.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from alexatm_jax.data.global_batches import GlobalBatches, per_host_batch_size
from alexatm_jax.data.sources import DATA_SOURCES, make_host_source
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.model.params import abstract_params
from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.storage import absolute, as_path, copy_file, is_remote
from alexatm_jax.training.checkpointing import TrainingCheckpointer
from alexatm_jax.training.flops import peak_flops_per_device as lookup_peak_flops
from alexatm_jax.training.flops import train_flops_per_step
from alexatm_jax.training.metrics_writer import MetricsWriter, rotate_run_logs
from alexatm_jax.training.model_dir import (GIN_CONFIG_FILE, SHARDING_TABLE_FILE, TOKENIZER_DIR,
                                            UNREADABLE_CHECKPOINTS_DIR, check_architecture,
                                            write_model_config, write_text_file)
from alexatm_jax.training.nonfinite import NonFiniteLossError, SkippedSteps
from alexatm_jax.training.optimizer import OptimizerConfig, make_optimizer
from alexatm_jax.training.preemption import StopRequest
from alexatm_jax.training.state import (abstract_train_state, create_train_state,
                                        train_state_shardings, training_model_config)
from alexatm_jax.training.step import make_eval_step, make_train_step
from alexatm_jax.training.throughput import ThroughputMeter
from alexatm_jax.training.warm_start import warm_start_params

NAN_POLICIES = ("skip", "stop")
DATA_RESUME_MODES = ("exact", "reseed")
ON_UNREADABLE = ("stop", "restart")
DEFAULT_SEQUENCE_LENGTH = {"inputs": 1024, "targets": 1024}
DATA_METRIC_PREFIX = "data/"

logger = logging.getLogger(__name__)
__all__ = ["InvalidTrainArguments", "NoReadableCheckpointError", "NonFiniteLossError",
           "TrainResult", "train"]


class InvalidTrainArguments(ValueError):
    """An argument of `train` is out of range or inconsistent (the message says which)."""


class NoReadableCheckpointError(RuntimeError):
    """MODEL_DIR had checkpoints but none could be restored (and on_unreadable='stop')."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a `train` call ended."""

    model_dir: str
    final_step: int
    last_checkpoint_step: int | None
    stopped_by_signal: str | None
    last_metrics: dict[str, float]
    skipped_steps: int = 0


def _validate(**args: Any) -> None:
    problems = []
    for name in ("train_steps", "batch_size", "checkpoint_period", "keep_checkpoints",
                 "log_every", "grad_accum_steps"):
        if int(args[name]) < 1:
            problems.append(f"{name} must be >= 1, got {args[name]}")
    for name in ("eval_period", "eval_steps"):
        if int(args[name]) < 0:
            problems.append(f"{name} must be >= 0 (0 disables evaluation), got {args[name]}")
    if int(args["max_skipped_steps"]) < 0 or int(args["skipped_window"]) < 1:
        problems.append(f"max_skipped_steps must be >= 0 and skipped_window >= 1, got "
                        f"{args['max_skipped_steps']} and {args['skipped_window']}")
    if not 0.0 <= float(args["max_skipped_fraction"]) <= 1.0:
        problems.append(f"max_skipped_fraction must be in [0, 1], got "
                        f"{args['max_skipped_fraction']}")
    if args["on_unreadable"] not in ON_UNREADABLE:
        problems.append(f"on_unreadable must be one of {ON_UNREADABLE}, got "
                        f"{args['on_unreadable']!r}")
    if any(int(step) < 1 for step in args["inject_nonfinite_steps"]):
        problems.append(f"inject_nonfinite_steps are 1-based steps, got "
                        f"{tuple(args['inject_nonfinite_steps'])}")
    if args["nan_policy"] not in NAN_POLICIES:
        problems.append(f"nan_policy must be one of {NAN_POLICIES}, got {args['nan_policy']!r}")
    if args["data_resume"] not in DATA_RESUME_MODES:
        problems.append(f"data_resume must be one of {DATA_RESUME_MODES}, got "
                        f"{args['data_resume']!r}")
    if args["data_source"] not in DATA_SOURCES:
        problems.append(f"data_source must be one of {DATA_SOURCES}, got {args['data_source']!r}")
    missing = {"inputs", "targets"} - set(args["sequence_length"])
    if missing:
        problems.append(f"sequence_length needs keys 'inputs' and 'targets', got "
                        f"{dict(args['sequence_length'])}")
    if not args["model_dir"]:
        problems.append("model_dir is empty: pass --model_dir or --gin.MODEL_DIR=...")
    if problems:
        raise InvalidTrainArguments("Invalid train() arguments: " + "; ".join(problems))


def _checked_vocabulary(model_config: ModelConfig, vocab_path: str | None) -> str:
    """Path of the SentencePiece model the SeqIO tasks will use; refuses one with more pieces
    than the model has embeddings."""
    from alexatm_jax.data.seqio_batches import resolve_vocabulary

    try:
        path, size = resolve_vocabulary(vocab_path)
    except (OSError, ValueError) as error:
        raise InvalidTrainArguments(f"the vocabulary cannot be used: {error}") from error
    if size > model_config.vocab_size:
        raise InvalidTrainArguments(
            f"the vocabulary {path} has {size} pieces but ModelConfig.vocab_size is "
            f"{model_config.vocab_size}: set the model's VOCAB_SIZE macro to at least {size}")
    return path


def _check_model_dir(model_dir: str) -> None:
    """Refuse a local MODEL_DIR that is not a directory or cannot be written (checked without
    creating anything); remote MODEL_DIRs are checked by their first write."""
    if is_remote(model_dir):
        return
    existing = model_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    where = (f"MODEL_DIR {model_dir}" if existing == model_dir
             else f"{existing} (on the way to MODEL_DIR {model_dir})")
    if not os.path.isdir(existing):
        raise InvalidTrainArguments(f"{where} exists and is not a directory: choose another "
                                    "--model_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidTrainArguments(f"{where} is not writable (read-only file system or "
                                    "permissions): choose another --model_dir")


def _check_data(data_source: str, mixture: str, data_dir: str | None,
                vocab_path: str | None) -> None:
    """Refuse a missing/empty DATA_DIR or an unknown mixture before MODEL_DIR is touched."""
    if data_source != "seqio":
        return
    from alexatm_jax.data.seqio_batches import check_dataset
    try:
        check_dataset(mixture=mixture, data_dir=data_dir, vocab_path=vocab_path)
    except (OSError, ValueError) as error:
        raise InvalidTrainArguments(f"the training data cannot be read: {error}") from error


def _check_unreadable(model_dir: str, checkpointer: TrainingCheckpointer,
                      on_unreadable: str) -> None:
    """No checkpoint could be restored: stop (NoReadableCheckpointError) if this MODEL_DIR held
    a run whose checkpoints are all unreadable, unless on_unreadable='restart' (then rotate its
    metrics aside). A MODEL_DIR that never had a checkpoint starts fresh."""
    quarantined = list(checkpointer.quarantined)
    unreadable_dir = as_path(model_dir) / UNREADABLE_CHECKPOINTS_DIR
    earlier = (sorted((p.name for p in unreadable_dir.iterdir()),
                      key=lambda name: (len(name.split("-")[0]), name))
               if unreadable_dir.is_dir() else [])
    if not quarantined and not earlier:
        return
    found = ("; ".join(quarantined) if quarantined else
             f"no checkpoint left; {UNREADABLE_CHECKPOINTS_DIR}/ holds {', '.join(earlier)}")
    if on_unreadable == "stop":
        raise NoReadableCheckpointError(
            f"MODEL_DIR {model_dir} has no readable checkpoint ({found}); unreadable ones are in "
            f"{unreadable_dir}. Refusing to start this run again from step 0. Restore a good "
            f"checkpoint into {checkpointer.directory}, use another --model_dir, or pass "
            "--gin.train.on_unreadable=\"'restart'\" to start afresh here (the old metrics are "
            "kept, renamed).")
    rotated = rotate_run_logs(model_dir) if jax.process_index() == 0 else []
    _say(f"No readable checkpoint in {model_dir} ({found}); starting again from step 0 as "
         f"on_unreadable='restart' asks" + (f"; kept the old logs as {', '.join(rotated)}"
                                             if rotated else ""))


def _report_data(report: tuple[dict[str, int], dict[str, str]] | None,
                 previous: Mapping[str, int], when: str) -> dict[str, float]:
    """Warn about input-pipeline counters that grew since `previous` (naming skipped files);
    returns the counters as metrics ({} for a source without counters)."""
    if report is None:
        return {}
    counts, bad_files = report
    grown = {name: value for name, value in counts.items()
             if name != "documents" and value > previous.get(name, 0)}
    if grown:
        logger.warning("data pipeline %s: %s (distinct bad records, each counted once however "
                       "often it is re-read; see README 'Bad input')%s", when,
                       ", ".join(f"{name}={value}" for name, value in grown.items()),
                       "".join(f"\n  skipped {path}: {why}" for path, why in bad_files.items())
                       if "bad_files" in grown else "")
    return {DATA_METRIC_PREFIX + name: float(value) for name, value in counts.items()}


def _record_tokenizer(model_dir: str, vocab_file: str) -> None:
    """Copy the vocabulary to MODEL_DIR/tokenizer/ (so `alexatm_jax.load(MODEL_DIR)` and the
    decoding tools find it), replacing an older one."""
    target = as_path(model_dir) / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.name != os.path.basename(vocab_file):
            stale.unlink()
    copy_file(vocab_file, target / os.path.basename(vocab_file))


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def _say(message: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


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
    return {"eval_loss": totals["loss_sum"] / denominator,
            "eval_accuracy": totals["correct"] / denominator}


def train(*, model_config: ModelConfig, model_dir: str, train_steps: int, batch_size: int,
          mixture: str = "alexatm_pretrain_local",
          sequence_length: Mapping[str, int] = DEFAULT_SEQUENCE_LENGTH,
          mesh_config: MeshConfig = MeshConfig(), rules: Any = "fsdp",
          optimizer_config: OptimizerConfig = OptimizerConfig(),
          checkpoint_period: int = 1000, keep_checkpoints: int = 3,
          async_checkpointing: bool = True, eval_period: int = 0, eval_steps: int = 10,
          eval_split: str = "validation", log_every: int = 100, seed: int = 0,
          data_source: str = "seqio", data_dir: str | None = None,
          vocab_path: str | None = None, pack: bool = True, data_resume: str = "exact",
          grad_accum_steps: int = 1,
          z_loss: float = 0.0, nan_policy: str = "skip", max_skipped_steps: int = 5,
          max_skipped_fraction: float = 0.1, skipped_window: int = 100,
          on_unreadable: str = "stop", inject_nonfinite_steps: tuple[int, ...] = (),
          init_from: str | None = None,
          init_from_prefixes: tuple[str, ...] = (), peak_flops_per_device: float | None = None,
          progress_bar: bool = True) -> TrainResult:
    """Train `model_config` until step `train_steps` in `model_dir` (resuming if possible).

    `batch_size` is the global batch (sequences per step over all processes);
    `sequence_length` the packed input/target lengths in tokens; `data_resume` 'exact' skips
    the examples already read on resume (bit-exact), 'reseed' starts a fresh stream (constant
    time, for very long runs); freezing is configured in
    `optimizer_config` (freeze_prefixes, freeze_steps). `peak_flops_per_device` (FLOP/s)
    overrides the chip table used for MFU (CPUs have none: MFU is then not logged).
    Non-finite steps are skipped (nan_policy='skip') until more than `max_skipped_steps` in a
    row or more than `max_skipped_fraction` of the last `skipped_window` steps were, or stop the
    run at the first one (nan_policy='stop'). `on_unreadable` ('stop' or 'restart') decides what
    a MODEL_DIR whose checkpoints are all unreadable does. `inject_nonfinite_steps` makes those
    1-based steps non-finite on purpose (fault injection for tests; empty by default).
    Returns a TrainResult; raises InvalidTrainArguments / ArchitectureMismatchError before
    touching MODEL_DIR, NonFiniteLossError, NoReadableCheckpointError, CheckpointSaveError.
    """
    _validate(**locals())
    sequence_length = {k: int(v) for k, v in sequence_length.items()}
    model_dir = absolute(model_dir)
    is_chief = jax.process_index() == 0
    _check_model_dir(model_dir)
    check_architecture(model_dir, model_config)
    vocab_file = _checked_vocabulary(model_config, vocab_path) if data_source == "seqio" else None
    _check_data(data_source, mixture, data_dir, vocab_path)

    try:  # configuration the run cannot use (mesh, batch split): refused, nothing written
        partitioner = Partitioner(mesh_config, rules)
        optimizer = make_optimizer(optimizer_config, train_steps)
        state_shardings = train_state_shardings(model_config, optimizer, partitioner)
        target = _with_shardings(abstract_train_state(model_config, optimizer), state_shardings)
        shard_index, num_shards = partitioner.data_shard_info()
        host_batch = per_host_batch_size(batch_size, partitioner)
        micro = batch_size // grad_accum_steps
        if batch_size % grad_accum_steps or micro % partitioner.num_batch_shards:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of grad_accum_steps="
                f"{grad_accum_steps} x the {partitioner.num_batch_shards} batch shards")
    except ValueError as error:
        raise InvalidTrainArguments(str(error)) from error

    # The launch is sound: from here on MODEL_DIR is written.
    checkpointer = TrainingCheckpointer(model_dir, keep=keep_checkpoints,
                                        async_save=async_checkpointing)
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        state, progress = restored.state, restored.progress
        _say(f"Resuming from checkpoint step {restored.step} in {checkpointer.directory}"
             + ("" if restored.verified else " (unverified: written before digests)")
             + (f" (init_from={init_from} ignored: it only applies to a new run)"
                if init_from else ""))
    else:
        _check_unreadable(model_dir, checkpointer, on_unreadable)
        state, progress = create_train_state(model_config, optimizer, partitioner, init_key), {}
        if init_from:
            try:
                params, copied = warm_start_params(state.params, model_config, init_from,
                                                   tuple(init_from_prefixes))
            except (FileNotFoundError, ValueError) as error:
                raise InvalidTrainArguments(f"init_from: {error}") from error
            state = state.replace(params=params)
            _say(f"Initialised {len(copied)} parameter arrays from {init_from}"
                 + (f" (prefixes {list(init_from_prefixes)})" if init_from_prefixes else ""))
    if is_chief:
        write_model_config(model_dir, model_config)
        if vocab_file:
            _record_tokenizer(model_dir, vocab_file)
        write_text_file(model_dir, GIN_CONFIG_FILE, gin.operative_config_str())
        table = partitioner.sharding_table(abstract_params(training_model_config(model_config)),
                                           state_shardings.params)
        write_text_file(model_dir, SHARDING_TABLE_FILE, table + "\n")
        _say(f"{partitioner}; devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
             f"{jax.process_count()} process(es)\n{table}")
    start_step = int(state.step)
    saved_steps = checkpointer.steps()

    def last_good_checkpoint() -> int | None:
        """The newest checkpoint saved before the run's first non-finite step (all when none)."""
        first = skipped.first_step
        before = [s for s in saved_steps if first is None or s < first]
        return before[-1] if before else None

    def describe_last_good() -> str:
        good = last_good_checkpoint()
        if good is None:
            return (f"No checkpoint was saved before the first non-finite step "
                    f"({skipped.first_step}); checkpoints in {checkpointer.directory}: "
                    f"{checkpointer.steps() or 'none'}")
        return (f"Last good checkpoint: step {good} in {checkpointer.directory} (the newest "
                f"saved before the first non-finite step, {skipped.first_step})")

    skipped = SkippedSteps(max_consecutive=max_skipped_steps, max_fraction=max_skipped_fraction,
                           window=skipped_window, progress=progress,
                           describe_last_good=describe_last_good, stop_at_first=nan_policy == "stop")
    if skipped.first_step is not None:
        checkpointer.protect(last_good_checkpoint())

    def batches_for(split: str, split_seed: int, resume: Mapping[str, Any] | None) -> GlobalBatches:
        source = make_host_source(
            data_source, mixture=mixture, split=split, sequence_length=sequence_length,
            seed=split_seed, shard_index=shard_index, num_shards=num_shards,
            per_host_batch_size=host_batch, vocab_size=model_config.vocab_size,
            decoder_start_token_id=model_config.decoder_start_token_id, data_dir=data_dir,
            vocab_path=vocab_path, pack=pack, repeat=True, resume_state=resume,
            resume_mode=data_resume)
        return GlobalBatches(source, partitioner)

    train_batches = batches_for("train", seed, progress.get("data_iterator"))
    train_step = make_train_step(
        model_config, optimizer, partitioner, grad_accum_steps=grad_accum_steps, z_loss=z_loss,
        skip_nonfinite=True, freeze_prefixes=optimizer_config.freeze_prefixes,
        freeze_steps=optimizer_config.freeze_steps,
        inject_nonfinite_steps=tuple(int(s) for s in inject_nonfinite_steps))
    eval_step = make_eval_step(model_config, partitioner) if eval_period and eval_steps else None
    eval_batches: list[dict[str, jax.Array]] = []  # read once, reused by every evaluation
    # Replicate the key over the whole mesh with jit: device_put cannot target the devices of
    # other processes in a multi-process run (every process holds the same key).
    dropout_key = jax.jit(lambda key: key, out_shardings=NamedSharding(
        partitioner.mesh, PartitionSpec()))(dropout_key)
    peak = peak_flops_per_device or lookup_peak_flops(
        jax.devices()[0].device_kind, "bfloat16" if model_config.dtype == "bfloat16" else "float32")
    meter = ThroughputMeter(
        positions_per_step=batch_size * (sequence_length["inputs"] + sequence_length["targets"]),
        flops_per_step=train_flops_per_step(model_config, batch_size, sequence_length["inputs"],
                                            sequence_length["targets"]),
        num_devices=jax.device_count(), peak_flops_per_device=peak)
    writer = MetricsWriter(model_dir, enabled=is_chief, resume_step=start_step)
    writer.write_text("config/gin", gin.operative_config_str(), start_step)
    bar = tqdm(total=train_steps, initial=start_step, desc="train", unit="step",
               disable=not (is_chief and progress_bar), dynamic_ncols=True)
    data_report = getattr(train_batches.source, "pipeline_report", None)
    data_counts: dict[str, float] = {}
    last_saved = restored.step if restored is not None else None
    last_record: dict[str, float] = {}
    stopped_by = None
    step = start_step

    def data_metrics(when: str) -> dict[str, float]:
        nonlocal data_counts
        previous = {k[len(DATA_METRIC_PREFIX):]: v for k, v in data_counts.items()}
        data_counts = _report_data(data_report() if data_report else None, previous, when)
        return data_counts

    def note_skips_then_save(at_step: int) -> None:
        nonlocal last_saved
        skipped.flush()
        if skipped.first_step is not None and checkpointer.protected_step is None:
            checkpointer.protect(last_good_checkpoint())
        checkpointer.save(at_step, state, {"data_iterator": train_batches.state(),
                                           **skipped.progress()})
        saved_steps.append(at_step)
        writer.sync()  # a remote MODEL_DIR gets the staged metrics/TensorBoard files
        last_saved = at_step

    failed = True
    try:
        with StopRequest() as stop_request:
            if start_step < train_steps:
                batch = next(train_batches)
                data_metrics("at start")
                compile_start = time.perf_counter()
                with partitioner.activate():
                    compiled = train_step.jitted.lower(state, batch, dropout_key).compile()
                _say(f"Compiled the train step in {time.perf_counter() - compile_start:.1f} s")
                meter.restart()
            for step in range(start_step + 1, train_steps + 1):
                if step > start_step + 1:
                    batch = next(train_batches)
                state, metrics = compiled(state, batch, dropout_key)
                skipped.push(step, metrics)  # acts on the previous step's flag: no device wait
                checkpointer.poll()  # a failed background save stops the run now
                meter.add_step(metrics["num_target_tokens"])
                bar.update(1)
                evaluate = eval_step is not None and step % eval_period == 0
                if (step % log_every == 0 or step == train_steps or step == start_step + 1
                        or evaluate):
                    record = _fetch(metrics)
                    # Every earlier step is observed already; this one is still pending.
                    record["skipped_total"] = float(skipped.total) + record["skipped"]
                    record.update(meter.report())
                    if evaluate:
                        if not eval_batches:
                            source = batches_for(eval_split, seed, None)
                            eval_batches = [next(source) for _ in range(eval_steps)]
                        record.update(_evaluate(eval_step, state.params, eval_batches))
                        record.update(data_metrics(f"at step {step}"))
                        meter.restart()
                    if step == train_steps:
                        record.update(data_metrics("at the end"))
                    writer.write(step, record)
                    bar.set_postfix(_postfix(record), refresh=False)
                    last_record = record
                stop_now = stop_request.should_stop()
                if step % checkpoint_period == 0 or step == train_steps or stop_now:
                    note_skips_then_save(step)
                if stop_now:
                    stopped_by = stop_request.signal_name or "a stop request on another process"
                    break
            skipped.flush()
        checkpointer.wait_until_finished()
        failed = False
    finally:
        bar.close()
        try:
            _close(checkpointer, quietly=failed)
        finally:
            _close(writer, quietly=failed)
    final_step = step
    if stopped_by:
        _say(f"Stopped by {stopped_by} after step {final_step}; checkpoint saved.")
    if skipped.summary():
        _say(skipped.summary())
    _say(f"Model dir: {model_dir}\n  checkpoints: {checkpointer.directory} (latest step "
         f"{last_saved})\n  metrics: {writer.jsonl_path}\n  TensorBoard: tensorboard --logdir "
         f"{writer.tensorboard_dir}")
    return TrainResult(model_dir=model_dir, final_step=final_step,
                       last_checkpoint_step=last_saved, stopped_by_signal=stopped_by,
                       last_metrics=last_record, skipped_steps=skipped.total)


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
