"""Optimizer and learning-rate schedule.

Adam over RDCCL's two parameter groups (projector / neck + decoder), learning rates scaled linearly
with the global batch (``lr * batch_size / train.lr_reference_batch``). The schedule is a pure
function of the optimizer step, applied to the groups before each step: nothing to checkpoint
beyond the step itself, and it works unchanged on the optimizer DeepSpeed wraps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipelines.base.config import Config, TrainConfig


def scaled_lrs(cfg: Config) -> tuple[float, float]:
    """(projector lr, rest lr) after the linear batch-size scaling."""
    t = cfg.train
    scale = cfg.data.batch_size / t.lr_reference_batch if t.lr_reference_batch > 0 else 1.0
    return t.lr_projector * scale, t.lr_rest * scale


def make_optimizer(model: Any, cfg: Config) -> torch.optim.Optimizer:
    """Adam over the trainable groups only (the frozen teacher never reaches the optimizer)."""
    lr_p, lr_r = scaled_lrs(cfg)
    groups = model.param_groups(lr_p, lr_r)  # empty groups (e.g. projector "none") are left out
    return torch.optim.Adam(groups, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)


def lr_factor(step: int, total_steps: int, t: TrainConfig) -> float:
    """Multiplier of the base lrs at optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant" or total_steps <= t.warmup_steps:
        return 1.0
    progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
