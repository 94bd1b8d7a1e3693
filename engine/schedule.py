"""Per-iteration learning-rate schedules: poly (power 0.9), cosine or step, with linear warm-up."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("poly", "cos", "step")


def lr_factor(it: int, total: int, name: str = "poly", warmup: int = 0, power: float = 0.9,
              step_every: int = 0, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at iteration ``it`` (0-based) of ``total``."""
    if warmup and it < warmup:
        return (it + 1) / warmup
    progress = min(it / max(total, 1), 1.0)
    if name == "poly":
        return (1.0 - progress) ** power
    if name == "cos":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if name == "step":
        return gamma ** (it // step_every) if step_every else 1.0
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, name: str = "poly", warmup: int = 0,
                    step_every: int = 0, gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state (last_epoch) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, name, warmup, step_every=step_every, gamma=gamma)
    )
