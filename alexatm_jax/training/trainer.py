"""The training run: `train(...)`, bound by gin (`gin/runs/pretrain.gin`) and run by alexatm-train.

Start-up precedence (T5X lesson: "resume" and "initialise from" are separate and explicit):
1. MODEL_DIR has a readable checkpoint -> resume it exactly (state, data position, step);
   `init_from` is then ignored (a message says so). A MODEL_DIR of another architecture is refused.
2. else `init_from` is set -> fresh run at step 0 whose parameters (or the subtrees named by
   `init_from_prefixes`) come from that model checkpoint or training MODEL_DIR.
3. else -> fresh run from random parameters (seed).

Per step: one global batch, one jitted sharded step, metrics every `log_every` steps (JSONL,
TensorBoard, progress bar), evaluation every `eval_period` (on the same first `eval_steps`
batches of the held-out split each time, read once), a checkpoint every `checkpoint_period`
and at the end. SIGTERM/SIGINT finish the current step, save and return normally.
"""

from __future__ import annotations

import dataclasses
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
from alexatm_jax.storage import absolute, as_path, copy_file
from alexatm_jax.training.checkpointing import TrainingCheckpointer
from alexatm_jax.training.flops import peak_flops_per_device as lookup_peak_flops
from alexatm_jax.training.flops import train_flops_per_step
from alexatm_jax.training.metrics_writer import MetricsWriter
from alexatm_jax.training.model_dir import (GIN_CONFIG_FILE, SHARDING_TABLE_FILE, TOKENIZER_DIR,
                                            check_architecture, write_model_config,
                                            write_text_file)
from alexatm_jax.training.optimizer import OptimizerConfig, make_optimizer
from alexatm_jax.training.preemption import StopRequest
from alexatm_jax.training.state import (abstract_train_state, create_train_state,
                                        train_state_shardings, training_model_config)
from alexatm_jax.training.step import make_eval_step, make_train_step
from alexatm_jax.training.throughput import ThroughputMeter
from alexatm_jax.training.warm_start import warm_start_params

NAN_POLICIES = ("skip", "stop")
DATA_RESUME_MODES = ("exact", "reseed")
DEFAULT_SEQUENCE_LENGTH = {"inputs": 1024, "targets": 1024}


class InvalidTrainArguments(ValueError):
    """An argument of `train` is out of range or inconsistent (the message says which)."""


class NonFiniteLossError(RuntimeError):
    """nan_policy='stop' met a step whose loss or gradient norm was NaN/Inf."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a `train` call ended."""

    model_dir: str
    final_step: int
    last_checkpoint_step: int | None
    stopped_by_signal: str | None
    last_metrics: dict[str, float]


def _validate(**args: Any) -> None:
    problems = []
    for name in ("train_steps", "batch_size", "checkpoint_period", "keep_checkpoints",
                 "log_every", "grad_accum_steps"):
        if int(args[name]) < 1:
            problems.append(f"{name} must be >= 1, got {args[name]}")
    for name in ("eval_period", "eval_steps"):
        if int(args[name]) < 0:
            problems.append(f"{name} must be >= 0 (0 disables evaluation), got {args[name]}")
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

    path, size = resolve_vocabulary(vocab_path)
    if size > model_config.vocab_size:
        raise InvalidTrainArguments(
            f"the vocabulary {path} has {size} pieces but ModelConfig.vocab_size is "
            f"{model_config.vocab_size}: set the model's VOCAB_SIZE macro to at least {size}")
    return path


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
          z_loss: float = 0.0, nan_policy: str = "skip", init_from: str | None = None,
          init_from_prefixes: tuple[str, ...] = (), peak_flops_per_device: float | None = None,
          progress_bar: bool = True) -> TrainResult:
    """Train `model_config` until step `train_steps` in `model_dir` (resuming if possible).

    `batch_size` is the global batch (sequences per step over all processes);
    `sequence_length` the packed input/target lengths in tokens; `data_resume` 'exact' skips
    the examples already read on resume (bit-exact), 'reseed' starts a fresh stream (constant
    time, for very long runs); freezing is configured in
    `optimizer_config` (freeze_prefixes, freeze_steps). `peak_flops_per_device` (FLOP/s)
    overrides the chip table used for MFU (CPUs have none: MFU is then not logged).
    Returns a TrainResult; raises NonFiniteLossError with nan_policy='stop'.
    """
    _validate(**locals())
    sequence_length = {k: int(v) for k, v in sequence_length.items()}
    model_dir = absolute(model_dir)
    is_chief = jax.process_index() == 0
    check_architecture(model_dir, model_config)
    vocab_file = _checked_vocabulary(model_config, vocab_path) if data_source == "seqio" else None

    partitioner = Partitioner(mesh_config, rules)
    optimizer = make_optimizer(optimizer_config, train_steps)
    state_shardings = train_state_shardings(model_config, optimizer, partitioner)
    target = _with_shardings(abstract_train_state(model_config, optimizer), state_shardings)
    shard_index, num_shards = partitioner.data_shard_info()
    host_batch = per_host_batch_size(batch_size, partitioner)
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

    checkpointer = TrainingCheckpointer(model_dir, keep=keep_checkpoints,
                                        async_save=async_checkpointing)
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        state, progress = restored.state, restored.progress
        _say(f"Resuming from checkpoint step {restored.step} in {checkpointer.directory}"
             + (f" (init_from={init_from} ignored: it only applies to a new run)"
                if init_from else ""))
    else:
        state, progress = create_train_state(model_config, optimizer, partitioner, init_key), {}
        if init_from:
            params, copied = warm_start_params(state.params, model_config, init_from,
                                               tuple(init_from_prefixes))
            state = state.replace(params=params)
            _say(f"Initialised {len(copied)} parameter arrays from {init_from}"
                 + (f" (prefixes {list(init_from_prefixes)})" if init_from_prefixes else ""))
    start_step = int(state.step)

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
        freeze_steps=optimizer_config.freeze_steps)
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
    skipped_total = jnp.asarray(float(progress.get("skipped_steps", 0)), jnp.float32)
    last_saved = restored.step if restored is not None else None
    last_record: dict[str, float] = {}
    stopped_by = None
    step = start_step
    try:
        with StopRequest() as stop_request:
            if start_step < train_steps:
                batch = next(train_batches)
                compile_start = time.perf_counter()
                with partitioner.activate():
                    compiled = train_step.jitted.lower(state, batch, dropout_key).compile()
                _say(f"Compiled the train step in {time.perf_counter() - compile_start:.1f} s")
                meter.restart()
            for step in range(start_step + 1, train_steps + 1):
                if step > start_step + 1:
                    batch = next(train_batches)
                state, metrics = compiled(state, batch, dropout_key)
                meter.add_step(metrics["num_target_tokens"])
                skipped_total = skipped_total + metrics["skipped"]
                bar.update(1)
                if nan_policy == "stop" and float(metrics["skipped"]) > 0:
                    raise NonFiniteLossError(
                        f"step {step}: the loss or gradient norm is not finite "
                        f"(nan_policy='stop'); the run stops without saving this state. Last good "
                        f"checkpoint: step {last_saved} in {checkpointer.directory}")
                evaluate = eval_step is not None and step % eval_period == 0
                if (step % log_every == 0 or step == train_steps or step == start_step + 1
                        or evaluate):
                    record = _fetch(metrics)
                    record["skipped_total"] = float(skipped_total)
                    record.update(meter.report())
                    if evaluate:
                        if not eval_batches:
                            source = batches_for(eval_split, seed, None)
                            eval_batches = [next(source) for _ in range(eval_steps)]
                        record.update(_evaluate(eval_step, state.params, eval_batches))
                        meter.restart()
                    writer.write(step, record)
                    bar.set_postfix(_postfix(record), refresh=False)
                    last_record = record
                stop_now = stop_request.should_stop()
                if step % checkpoint_period == 0 or step == train_steps or stop_now:
                    checkpointer.save(step, state, {"data_iterator": train_batches.state(),
                                                    "skipped_steps": int(skipped_total)})
                    writer.sync()  # a remote MODEL_DIR gets the staged metrics/TensorBoard files
                    last_saved = step
                if stop_now:
                    stopped_by = stop_request.signal_name or "a stop request on another process"
                    break
        checkpointer.wait_until_finished()
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
    final_step = step
    if stopped_by:
        _say(f"Stopped by {stopped_by} after step {final_step}; checkpoint saved.")
    _say(f"Model dir: {model_dir}\n  checkpoints: {checkpointer.directory} (latest step "
         f"{last_saved})\n  metrics: {writer.jsonl_path}\n  TensorBoard: tensorboard --logdir "
         f"{writer.tensorboard_dir}")
    return TrainResult(model_dir=model_dir, final_step=final_step,
                       last_checkpoint_step=last_saved, stopped_by_signal=stopped_by,
                       last_metrics=last_record)


def _postfix(record: Mapping[str, float]) -> dict[str, str]:
    out = {"loss": f"{record['loss']:.3f}"}
    if "tokens_per_s" in record:
        out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "mfu" in record:
        out["mfu"] = f"{100 * record['mfu']:.1f}%"
    return out
