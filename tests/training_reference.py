"""Shared pieces of the training-trajectory parity tests (test_training_parity.py for
pretraining batches, test_finetuning_parity.py for fine-tuning pairs): the reference side's
AdamW with the release's decay / no-decay groups and the schedule written out for torch, and our
side's train state warm-started from a converted checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import torch

from alexatm_jax.partitioning import MeshConfig, Partitioner
from alexatm_jax.training import OptimizerConfig, TrainConfig, create_train_state, make_train_step
from alexatm_jax.training.optimizer import make_optimizer
from alexatm_jax.training.warm_start import warm_start_params


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimizer both sides run: AdamW, linear warm-up from 0 then linear decay to `end_lr`
    over `steps` updates, weight decay except biases and LayerNorms, global-norm clipping."""

    steps: int
    peak_lr: float
    end_lr: float
    warmup: int
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    @property
    def optimizer_config(self) -> OptimizerConfig:
        """Ours."""
        return OptimizerConfig(
            learning_rate=self.peak_lr,
            end_learning_rate=self.end_lr,
            warmup_steps=self.warmup,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
        )

    def learning_rate(self, update: int) -> float:
        """The schedule written out for torch (0-based update)."""
        if update < self.warmup:
            return self.peak_lr * update / self.warmup
        fraction = min(1.0, (update - self.warmup) / (self.steps - self.warmup))
        return self.peak_lr + (self.end_lr - self.peak_lr) * fraction

    def torch_adamw(self, model: torch.nn.Module) -> torch.optim.AdamW:
        """torch.optim.AdamW over the reference's parameters with the no-decay group (biases,
        LayerNorms; final_logits_bias is a buffer, not a parameter)."""
        no_decay = [
            p
            for n, p in model.named_parameters()
            if n.endswith(".bias") or "layer_norm" in n or "layernorm" in n
        ]
        decay = [p for p in model.parameters() if all(p is not q for q in no_decay)]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.peak_lr,
            betas=(self.b1, self.b2),
            eps=self.eps,
        )

    def torch_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Clip the accumulated gradients and apply one update."""
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm)
        optimizer.step()


def our_train_step(config: TrainConfig, init_from: str) -> tuple[Any, Any, Partitioner]:
    """(train state with parameters warm-started from `init_from`, the jitted train step, its
    partitioner) on one device, as the trainer builds them for a new run."""
    partitioner = Partitioner(MeshConfig(), "fsdp")
    optimizer = make_optimizer(config.optimizer_config, config.train_steps)
    state = create_train_state(config.model_config, optimizer, partitioner, jax.random.key(0))
    params, _ = warm_start_params(state.params, config.model_config, init_from)
    return state.replace(params=params), make_train_step(config, partitioner), partitioner
