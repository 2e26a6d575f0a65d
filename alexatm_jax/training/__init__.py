"""The sharded training core: optimizer, train state, train/eval steps, FLOP accounting."""

from alexatm_jax.training.config import TrainConfig
from alexatm_jax.training.flops import PEAK_FLOPS, mfu, peak_flops_per_device, train_flops_per_step
from alexatm_jax.training.optimizer import (
    OptimizerConfig,
    applied_learning_rate,
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
)
from alexatm_jax.training.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    train_state_shardings,
)
from alexatm_jax.training.step import make_eval_step, make_train_step

__all__ = [
    "OptimizerConfig",
    "PEAK_FLOPS",
    "TrainConfig",
    "TrainState",
    "abstract_train_state",
    "applied_learning_rate",
    "create_train_state",
    "decay_mask",
    "learning_rate_schedule",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "mfu",
    "peak_flops_per_device",
    "train_state_shardings",
    "train_flops_per_step",
]
