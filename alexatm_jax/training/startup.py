"""The start of a training run, before its first step: the checks that refuse an unsound launch
without writing anything (`preflight`, `layout`), the state restored from MODEL_DIR or
initialised (`restore_or_initialise`), and the run's record in MODEL_DIR (`record_run`)."""

from __future__ import annotations

import os
from typing import Any

import jax

import gin
from alexatm_jax.data.global_batches import per_host_batch_size
from alexatm_jax.model.params import abstract_params
from alexatm_jax.partitioning import Partitioner
from alexatm_jax.storage import absolute, as_path, copy_file
from alexatm_jax.training.checkpointing import TrainingCheckpointer
from alexatm_jax.training.config import InvalidTrainArguments, TrainConfig
from alexatm_jax.training.console import say
from alexatm_jax.training.model_dir import (
    GIN_CONFIG_FILE,
    SHARDING_TABLE_FILE,
    TOKENIZER_DIR,
    check_architecture,
    write_model_config,
    write_text_file,
)
from alexatm_jax.training.optimizer import is_buffer_statistic, make_optimizer
from alexatm_jax.training.preflight import (
    check_data,
    check_model_dir,
    check_remote_paths,
    check_unreadable,
    checked_vocabulary,
)
from alexatm_jax.training.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    train_state_shardings,
    training_model_config,
)
from alexatm_jax.training.warm_start import warm_start_params


def preflight(config: TrainConfig) -> tuple[str, str | None]:
    """(absolute MODEL_DIR, vocabulary file or None) once the configuration, MODEL_DIR, the
    architecture, the vocabulary and the data are known to be usable; writes nothing."""
    config.validate()
    model_dir = absolute(config.model_dir)
    check_remote_paths(
        model_dir,
        {
            "DATA_DIR": config.data_dir if config.data_source == "seqio" else None,
            "prepared data": config.prepared_data if config.data_source == "prepared" else None,
            "vocabulary": config.vocab_path if config.data_source != "synthetic" else None,
            "init_from": config.init_from,
        },
    )
    check_model_dir(model_dir)
    check_architecture(model_dir, config.model_config)
    vocab_file = (
        checked_vocabulary(config.model_config, config.vocab_path)
        if config.data_source != "synthetic"
        else None
    )
    check_data(
        config.data_source,
        config.mixture,
        config.data_dir,
        config.vocab_path,
        config.prepared_data,
    )
    return model_dir, vocab_file


def layout(config: TrainConfig) -> tuple[Partitioner, Any, TrainState]:
    """(partitioner, optimizer, restore target with shardings); a mesh or batch split the run
    cannot use raises InvalidTrainArguments (nothing written yet)."""
    try:
        partitioner = Partitioner(config.mesh_config, config.rules)
        optimizer = make_optimizer(config.optimizer_config, config.train_steps)
        shardings = train_state_shardings(config.model_config, optimizer, partitioner)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_train_state(config.model_config, optimizer),
            shardings,
        )
        partitioner.data_shard_info()
        per_host_batch_size(config.batch_size, partitioner)
        problem = config.batch_layout_problem(partitioner.num_batch_shards)
        if problem:
            raise ValueError(problem)
    except ValueError as error:
        raise InvalidTrainArguments(str(error)) from error
    return partitioner, optimizer, target


def restore_or_initialise(
    config: TrainConfig,
    model_dir: str,
    checkpointer: TrainingCheckpointer,
    target: TrainState,
    partitioner: Partitioner,
    optimizer: Any,
    init_key: jax.Array,
) -> tuple[TrainState, dict[str, Any], int | None]:
    """(state, progress, restored step or None): resume MODEL_DIR's latest readable checkpoint,
    else a fresh state (warm-started from `init_from` when set)."""
    restored = checkpointer.restore_latest(
        target, droppable=lambda name: is_buffer_statistic(name, config.optimizer_config.buffers)
    )
    if restored is not None:
        say(
            f"Resuming from checkpoint step {restored.step} in {checkpointer.directory}"
            + ("" if restored.verified else " (unverified: written before digests)")
            + (
                f" (init_from={config.init_from} ignored: it only applies to a new run)"
                if config.init_from
                else ""
            )
        )
        return restored.state, restored.progress, restored.step
    check_unreadable(model_dir, checkpointer, config.on_unreadable)
    state = create_train_state(config.model_config, optimizer, partitioner, init_key)
    if config.init_from:
        try:
            params, copied = warm_start_params(
                state.params, config.model_config, config.init_from, config.init_from_prefixes
            )
        except (FileNotFoundError, ValueError) as error:
            raise InvalidTrainArguments(f"init_from: {error}") from error
        state = state.replace(params=params)
        say(
            f"Initialised {len(copied)} parameter arrays from {config.init_from}"
            + (
                f" (prefixes {list(config.init_from_prefixes)})"
                if config.init_from_prefixes
                else ""
            )
        )
    return state, {}, None


def record_run(
    config: TrainConfig,
    model_dir: str,
    vocab_file: str | None,
    partitioner: Partitioner,
    target: TrainState,
) -> None:
    """Write the model config, tokenizer, operative gin config and sharding table to MODEL_DIR
    and print the table."""
    write_model_config(model_dir, config.model_config)
    if vocab_file:
        _record_tokenizer(model_dir, vocab_file)
    write_text_file(model_dir, GIN_CONFIG_FILE, gin.operative_config_str())
    table = partitioner.sharding_table(
        abstract_params(training_model_config(config.model_config)),
        jax.tree.map(lambda x: x.sharding, target.params),
    )
    write_text_file(model_dir, SHARDING_TABLE_FILE, table + "\n")
    say(
        f"{partitioner}; devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{jax.process_count()} process(es)\n"
        + (table + "\n" if config.show_sharding_table else "")
        + f"Parameter shardings: {os.path.join(model_dir, SHARDING_TABLE_FILE)}"
    )


def _record_tokenizer(model_dir: str, vocab_file: str) -> None:
    """Copy the vocabulary to MODEL_DIR/tokenizer/ (so `alexatm_jax.load(MODEL_DIR)` and the
    decoding tools find it), replacing an older one."""
    target = as_path(model_dir) / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.name != os.path.basename(vocab_file):
            stale.unlink()
    copy_file(vocab_file, target / os.path.basename(vocab_file))
