"""The paper's optimizer: AdamW (or Adafactor), linear decay 1e-4 -> 5e-6, masked decay,
global-norm clipping, and an optional frozen-subtree window (the warm-started encoder). The
paper's recipe: docs/paper_facts.md#optimizer.

Choices where the paper is silent (all configurable): b1=0.9, b2=0.95 (the large-batch LLM
pretraining convention, steadier than 0.999 under bf16 and 2M-token batches), eps=1e-8, no warmup,
global-norm clipping at 1.0. Weight decay is decoupled and multiplied by the learning rate
(PyTorch AdamW semantics) for both optimizers.

Buffers: parameters named in `buffers` (default `final_logits_bias`, which the release keeps as a
registered buffer: loaded and saved, never trained) are outside the optimizer altogether. They get
no update, no optimizer state, and no place in the global clipping norm; the train step computes
no gradient for them. `buffers=()` trains them like any other bias.

Freezing: parameters whose path starts with one of `freeze_prefixes` get no update and no
optimizer-state change for the first `freeze_steps` steps, and their gradients are left out of
the global clipping norm. They keep their own moment estimates and step count, so when they thaw
Adam's bias correction starts afresh for them (a shared count would make the first thawed
updates up to ~6x too large with b2=0.999); their learning rate follows the global schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "adafactor")
NO_DECAY_NAMES = ("bias", "scale", "final_logits_bias")
TRAINABLE, FROZEN = "trainable", "frozen"
Schedule = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Hyper-parameters of the update rule; defaults follow docs/paper_facts.md#optimizer."""

    name: str = "adamw"
    learning_rate: float = 1e-4
    end_learning_rate: float = 5e-6
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    buffers: tuple[str, ...] = ("final_logits_bias",)
    freeze_prefixes: tuple[str, ...] = ()
    freeze_steps: int = 0
    adafactor_decay_rate: float = 0.8
    adafactor_min_dim_size_to_factor: int = 128
    adafactor_clipping_threshold: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze_prefixes", tuple(self.freeze_prefixes))
        object.__setattr__(self, "buffers", tuple(self.buffers))
        problems = []
        if self.name not in OPTIMIZERS:
            problems.append(f"name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.learning_rate <= 0 or self.end_learning_rate < 0:
            problems.append("learning_rate must be > 0 and end_learning_rate >= 0")
        for field in ("warmup_steps", "freeze_steps"):
            if getattr(self, field) < 0:
                problems.append(f"{field} must be >= 0, got {getattr(self, field)}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            problems.append(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.weight_decay < 0 or self.clip_norm < 0 or self.eps <= 0:
            problems.append("weight_decay and clip_norm must be >= 0 and eps > 0")
        if bool(self.freeze_prefixes) != (self.freeze_steps > 0):
            problems.append(
                "freeze_prefixes and freeze_steps go together: set both (e.g. "
                "('encoder', 'token_embedder') and 100000) or neither"
            )
        overlap = [p for p in self.freeze_prefixes if matches_prefix(p, self.buffers)]
        if overlap:
            problems.append(
                f"freeze_prefixes {overlap} lie inside buffers {self.buffers}, which are never "
                "trained: drop them from freeze_prefixes"
            )
        if problems:
            raise ValueError("Invalid OptimizerConfig: " + "; ".join(problems))


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> Schedule:
    """Learning rate (a float32 scalar) as a function of the number of applied updates.

    Linear warm-up from 0 over `warmup_steps`, then linear decay from `learning_rate` to
    `end_learning_rate` at `total_steps` (constant afterwards).
    """
    if total_steps <= cfg.warmup_steps:
        raise ValueError(f"total_steps={total_steps} must exceed warmup_steps={cfg.warmup_steps}")
    decay = optax.linear_schedule(
        cfg.learning_rate, cfg.end_learning_rate, total_steps - cfg.warmup_steps
    )
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params: Any) -> Any:
    """Tree of bools: True where weight decay applies (not biases, LayerNorm scales/biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) not in NO_DECAY_NAMES, params
    )


def path_string(path: tuple[Any, ...]) -> str:
    """'encoder/layers_0/mlp/wi/kernel' for a tree path of dict keys."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def matches_prefix(path: str, prefixes: tuple[str, ...]) -> bool:
    """True if `path` is one of `prefixes` or lies below one of them (whole components)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _leaf_name(path: tuple[Any, ...]) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


class LearningRateState(NamedTuple):
    """Updates applied so far, and the learning rate of the latest one."""

    count: jax.Array
    learning_rate: jax.Array


def scale_by_recorded_schedule(schedule: Schedule) -> optax.GradientTransformation:
    """Multiply updates by -schedule(count) and remember the rate used (for logging)."""

    def init(params: Any) -> LearningRateState:
        del params
        return LearningRateState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update(updates: Any, state: LearningRateState, params: Any = None):
        del params
        rate = jnp.asarray(schedule(state.count), jnp.float32)
        updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, LearningRateState(optax.safe_increment(state.count), rate)

    return optax.GradientTransformation(init, update)


def applied_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the latest update, read from the state (0 before the first)."""
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LearningRateState))
        if isinstance(x, LearningRateState)
    ]
    if len(found) != 1:
        raise ValueError(
            "optimizer state was not built by make_optimizer: expected one "
            f"LearningRateState, found {len(found)}"
        )
    return found[0].learning_rate


class HeldState(NamedTuple):
    """Steps seen by a frozen group, and its inner optimizer state (untouched while held)."""

    count: jax.Array
    inner_state: Any


def hold_for_steps(
    inner: optax.GradientTransformation, num_steps: int
) -> optax.GradientTransformation:
    """`inner`, except that the first `num_steps` calls give zero updates and keep its state."""

    def init(params: Any) -> HeldState:
        return HeldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates: Any, state: HeldState, params: Any = None):
        def run(_):
            return inner.update(updates, state.inner_state, params)

        def hold(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner_state

        new_updates, inner_state = jax.lax.cond(state.count >= num_steps, run, hold, None)
        return new_updates, HeldState(optax.safe_increment(state.count), inner_state)

    return optax.GradientTransformation(init, update)


class StepCountState(NamedTuple):
    """Steps seen so far."""

    count: jax.Array


def zero_gradients_for_steps(
    is_frozen: Callable[[Any], Any], num_steps: int
) -> optax.GradientTransformation:
    """Zero the leaves where `is_frozen(params)` is True during the first `num_steps` calls."""

    def init(params: Any) -> StepCountState:
        del params
        return StepCountState(jnp.zeros([], jnp.int32))

    def update(updates: Any, state: StepCountState, params: Any = None):
        del params
        keep = state.count >= num_steps
        frozen = is_frozen(updates)
        updates = jax.tree.map(
            lambda u, f: jnp.where(keep, u, jnp.zeros_like(u)) if f else u, updates, frozen
        )
        return updates, StepCountState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def freeze_labels(prefixes: tuple[str, ...]) -> Callable[[Any], Any]:
    """A function params -> tree of FROZEN/TRAINABLE labels; raises if a prefix matches nothing."""

    def labels(params: Any) -> Any:
        tree = jax.tree_util.tree_map_with_path(
            lambda path, _: FROZEN if matches_prefix(path_string(path), prefixes) else TRAINABLE,
            params,
        )
        paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        unused = [p for p in prefixes if not any(matches_prefix(x, (p,)) for x in paths)]
        if unused:
            top = sorted({x.split("/")[0] for x in paths})
            raise ValueError(
                f"freeze_prefixes {unused} match no parameter; top-level parameter names are {top}"
            )
        return tree

    return labels


def _update_rule(
    cfg: OptimizerConfig, schedule: Schedule, record_learning_rate: bool
) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        direction = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        direction = optax.chain(
            optax.scale_by_factored_rms(
                decay_rate=cfg.adafactor_decay_rate,
                min_dim_size_to_factor=cfg.adafactor_min_dim_size_to_factor,
            ),
            optax.clip_by_block_rms(cfg.adafactor_clipping_threshold),
        )
    steps = [direction]
    if cfg.weight_decay:
        steps.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    steps.append(
        scale_by_recorded_schedule(schedule)
        if record_learning_rate
        else optax.scale_by_schedule(lambda count: -schedule(count))
    )
    return optax.chain(*steps)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The full update rule for a run of `total_steps` steps (updates are added to params);
    `cfg.buffers` are left out of it (`without_buffers`)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    if not cfg.freeze_prefixes:
        rule = optax.chain(*clip, _update_rule(cfg, schedule, record_learning_rate=True))
        return without_buffers(rule, cfg.buffers)
    labels = freeze_labels(cfg.freeze_prefixes)
    thawed_schedule = lambda count: schedule(count + cfg.freeze_steps)
    groups = {
        TRAINABLE: _update_rule(cfg, schedule, record_learning_rate=True),
        FROZEN: hold_for_steps(
            _update_rule(cfg, thawed_schedule, record_learning_rate=False), cfg.freeze_steps
        ),
    }
    is_frozen = lambda tree: jax.tree.map(lambda label: label == FROZEN, labels(tree))
    rule = optax.chain(
        zero_gradients_for_steps(is_frozen, cfg.freeze_steps),
        *clip,
        optax.multi_transform(groups, labels),
    )
    return without_buffers(rule, cfg.buffers)


def without_buffers(
    inner: optax.GradientTransformation, buffers: tuple[str, ...]
) -> optax.GradientTransformation:
    """`inner` applied to the parameters outside `buffers` (path prefixes); buffers get a zero
    update, no state and no share of `inner`'s clipping norm. The state is `inner`'s own, so it
    has the same paths as `inner` over the whole tree, less the buffers' entries."""
    if not buffers:
        return inner

    def init(params: Any) -> Any:
        return inner.init(trainable_part(params, buffers))

    def update(updates: Any, state: Any, params: Any = None):
        trainable_params = None if params is None else trainable_part(params, buffers)
        new_updates, new_state = inner.update(
            trainable_part(updates, buffers), state, trainable_params
        )
        return _with_zero_buffers(new_updates, updates, buffers), new_state

    return optax.GradientTransformation(init, update)


def is_buffer_statistic(name: str, buffers: tuple[str, ...]) -> bool:
    """True for the dotted checkpoint name of an optimizer statistic of one of `buffers` (e.g.
    `opt_state.1.0.mu.final_logits_bias`): what a checkpoint written while they were trained
    holds and a run that keeps them as buffers does not."""
    return name.startswith("opt_state.") and any(
        "." + buffer.strip("/").replace("/", ".") + "." in name + "." for buffer in buffers
    )


def trainable_part(tree: Any, buffers: tuple[str, ...], prefix: str = "") -> Any:
    """The nested dict `tree` without the entries whose path lies in `buffers`."""
    if not isinstance(tree, Mapping):
        return tree
    kept = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if not matches_prefix(path, buffers):
            kept[key] = trainable_part(value, buffers, path)
    return kept


def _with_zero_buffers(
    trainable: Any, full: Any, buffers: tuple[str, ...], prefix: str = ""
) -> Any:
    """`trainable` (a `trainable_part` of `full`) with zeros shaped like `full`'s buffers."""
    if not isinstance(full, Mapping):
        return trainable
    merged = {}
    for key, value in full.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if matches_prefix(path, buffers):
            merged[key] = jax.tree.map(jnp.zeros_like, value)
        else:
            merged[key] = _with_zero_buffers(trainable[key], value, buffers, path)
    return merged
