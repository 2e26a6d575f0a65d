"""`TrainConfig`: everything one training run is configured with, in one frozen dataclass.

`train(config)`, `make_plan(config)` and `make_train_step(config, partitioner)` all take it; gin
binds it once, as `train.*` (the T5X convention: `gin/runs/pretrain.gin`), through
`alexatm_jax.gin_registry.train_config_from_gin`. `validate()` refuses values out of range
before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from alexatm_jax.data.sources import DATA_SOURCES
from alexatm_jax.model.config import ModelConfig
from alexatm_jax.partitioning import MeshConfig
from alexatm_jax.training.optimizer import OptimizerConfig

NAN_POLICIES = ("skip", "stop")
DATA_RESUME_MODES = ("exact", "reseed")
ON_UNREADABLE = ("stop", "restart")
DEFAULT_SEQUENCE_LENGTH = {"inputs": 1024, "targets": 1024}
Depths = tuple[int, int]


class InvalidTrainArguments(ValueError):
    """A TrainConfig value is out of range or inconsistent (the message says which)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Model and layout: `model_config`; `mesh_config` and `rules` (a `RULE_SETS` name or
    (logical, mesh) pairs). Batch: `batch_size` global sequences per step, split into
    `grad_accum_steps` microbatches; `sequence_length` the packed input/target lengths in tokens.
    Optimizer: `optimizer_config` (freezing included) over `train_steps` updates, `z_loss`.
    Periods (steps): `checkpoint_period`, `eval_period` (0: never), `log_every`.
    Data: `data_source` ('seqio' streams mixture `mixture` over `data_dir`; 'prepared' reads
    what `alexatm-data prepare` wrote to `prepared_data` for it, by index; or 'synthetic'),
    `vocab_path`, `pack`, `data_resume` (SeqIO: 'exact' skips what was read; 'reseed' starts a
    fresh stream in constant time; prepared data always resumes exactly in constant time), `eval_split`/`eval_steps` (held-out batches, read once).
    Policies: non-finite steps are skipped (`nan_policy='skip'`) until more than
    `max_skipped_steps` in a row or `max_skipped_fraction` of the last `skipped_window` were,
    or stop the run at once ('stop'); `on_unreadable` ('stop'/'restart') decides what a
    MODEL_DIR whose checkpoints are all unreadable does; `inject_nonfinite_steps` makes those
    1-based steps non-finite on purpose (fault injection for tests). `init_from` /
    `init_from_prefixes` warm-start a new run. `peak_flops_per_device` (FLOP/s) overrides the
    chip table used for MFU. `show_sharding_table` prints the parameter sharding table at start
    (it is always written to MODEL_DIR/sharding_table.txt). `fused_head` computes the LM head inside the loss;
    `parallel_branches` splits each microbatch into independent gradient branches (None: one
    per CPU core) — see `make_train_step`. `eval_hooks`: evaluations run every `eval_period`
    beside the held-out loss (e.g. `TaskMetricEval`, the task's metric on its validation split;
    `alexatm_jax.training.eval_hooks`; `FewShotEval`, the paper's tasks, every `period` steps);
    `keep_best` keeps the checkpoint with the best value of the first hook's main metric in
    MODEL_DIR/best.
    """

    model_config: ModelConfig
    train_steps: int
    batch_size: int
    model_dir: str = ""
    mixture: str = "alexatm_pretrain_local"
    sequence_length: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SEQUENCE_LENGTH)
    )
    mesh_config: MeshConfig = MeshConfig()
    rules: Any = "fsdp"
    optimizer_config: OptimizerConfig = OptimizerConfig()
    grad_accum_steps: int = 1
    z_loss: float = 0.0
    checkpoint_period: int = 1000
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    eval_period: int = 0
    eval_steps: int = 10
    eval_split: str = "validation"
    log_every: int = 100
    seed: int = 0
    data_source: str = "seqio"
    data_dir: str | None = None
    prepared_data: str | None = None
    vocab_path: str | None = None
    pack: bool = True
    data_resume: str = "exact"
    nan_policy: str = "skip"
    max_skipped_steps: int = 5
    max_skipped_fraction: float = 0.1
    skipped_window: int = 100
    on_unreadable: str = "stop"
    inject_nonfinite_steps: tuple[int, ...] = ()
    init_from: str | None = None
    init_from_prefixes: tuple[str, ...] = ()
    peak_flops_per_device: float | None = None
    progress_bar: bool = True
    show_sharding_table: bool = True
    fused_head: bool = True
    parallel_branches: int | None = 1
    eval_hooks: tuple[Any, ...] = ()
    keep_best: bool = False

    def __post_init__(self) -> None:
        lengths = dict(self.sequence_length)
        if {"inputs", "targets"} <= set(lengths):
            lengths = {name: int(value) for name, value in lengths.items()}
        object.__setattr__(self, "sequence_length", lengths)
        object.__setattr__(
            self, "inject_nonfinite_steps", tuple(int(step) for step in self.inject_nonfinite_steps)
        )
        object.__setattr__(self, "init_from_prefixes", tuple(self.init_from_prefixes))
        object.__setattr__(self, "eval_hooks", tuple(self.eval_hooks))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def depths(self) -> Depths:
        """(encoder layers, decoder layers)."""
        return self.model_config.num_encoder_layers, self.model_config.num_decoder_layers

    def with_depths(self, depths: Depths) -> TrainConfig:
        """This run with another number of encoder and decoder layers (for planning)."""
        return self.replace(
            model_config=self.model_config.replace(
                num_encoder_layers=depths[0], num_decoder_layers=depths[1]
            )
        )

    @property
    def positions_per_step(self) -> int:
        """Input + target positions of one global batch (padding included)."""
        return self.batch_size * (self.sequence_length["inputs"] + self.sequence_length["targets"])

    def validate(self) -> None:
        """Raise InvalidTrainArguments naming every value out of range (MODEL_DIR included)."""
        problems = self.problems()
        if not self.model_dir:
            problems.append("model_dir is empty: pass --model_dir or --gin.MODEL_DIR=...")
        if problems:
            raise InvalidTrainArguments("Invalid train configuration: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every value out of range, as messages naming the field (empty when all are fine)."""
        problems = [
            f"{name} must be >= 1, got {getattr(self, name)}"
            for name in (
                "train_steps",
                "batch_size",
                "checkpoint_period",
                "keep_checkpoints",
                "log_every",
                "grad_accum_steps",
            )
            if int(getattr(self, name)) < 1
        ]
        problems += [
            f"{name} must be >= 0 (0 disables evaluation), got {getattr(self, name)}"
            for name in ("eval_period", "eval_steps")
            if int(getattr(self, name)) < 0
        ]
        if self.max_skipped_steps < 0 or self.skipped_window < 1:
            problems.append(
                f"max_skipped_steps must be >= 0 and skipped_window >= 1, got "
                f"{self.max_skipped_steps} and {self.skipped_window}"
            )
        if not 0.0 <= float(self.max_skipped_fraction) <= 1.0:
            problems.append(
                f"max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}"
            )
        if any(step < 1 for step in self.inject_nonfinite_steps):
            problems.append(
                f"inject_nonfinite_steps are 1-based steps, got {self.inject_nonfinite_steps}"
            )
        for name, allowed in (
            ("on_unreadable", ON_UNREADABLE),
            ("nan_policy", NAN_POLICIES),
            ("data_resume", DATA_RESUME_MODES),
            ("data_source", DATA_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.data_source == "prepared" and not self.prepared_data:
            problems.append(
                "data_source='prepared' needs train.prepared_data, the directory that "
                "`alexatm-data prepare --out DIR` wrote"
            )
        if self.data_source == "prepared" and not self.pack:
            problems.append("prepared data is always packed: set train.pack = True")
        if {"inputs", "targets"} - set(self.sequence_length):
            problems.append(
                f"sequence_length needs keys 'inputs' and 'targets', got "
                f"{dict(self.sequence_length)}"
            )
        if self.keep_best and not (self.eval_hooks and self.eval_period):
            problems.append(
                "keep_best needs an evaluation hook (train.eval_hooks) and eval_period >= 1"
            )
        for hook in self.eval_hooks:
            period = getattr(hook, "period", 0)
            if period and (not self.eval_period or period % self.eval_period):
                problems.append(
                    f"{type(hook).__name__}.period={period} must be a multiple of "
                    f"eval_period={self.eval_period}: hooks run at evaluation steps"
                )
        if self.parallel_branches is not None and self.parallel_branches < 1:
            problems.append(f"parallel_branches must be >= 1 or None, got {self.parallel_branches}")
        return problems

    def batch_layout_problem(self, num_batch_shards: int) -> str | None:
        """Why the global batch cannot be split into microbatches over `num_batch_shards`
        devices' rows (None when it can)."""
        micro, rest = divmod(self.batch_size, self.grad_accum_steps)
        if rest or micro % num_batch_shards:
            return (
                f"batch_size={self.batch_size} must be a multiple of grad_accum_steps="
                f"{self.grad_accum_steps} x the {num_batch_shards} batch shards; choose a "
                f"multiple of {self.grad_accum_steps * num_batch_shards} (--gin.BATCH_SIZE=...)"
            )
        return None
