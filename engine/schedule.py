"""Per-iteration learning-rate schedules: poly (power 0.9), cosine or step, with linear warm-up.

``Schedule`` is the one rule: the training loop's scheduler and every report of a learning rate
(e.g. when ``--resume --epochs`` extends a run) evaluate the same ``Schedule.factor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

SCHEDULES = ("poly", "cos", "step")
POLY_POWER = 0.9  # DeepLab's poly schedule, as the reference recipe


@dataclass(frozen=True)
class Schedule:
    """Multiplier of the base learning rate at each iteration.

    Args:
        name: 'poly', 'cos' or 'step'.
        total: iterations of the whole schedule (poly and cos reach their end there).
        warmup: linear warm-up iterations (factor (it + 1) / warmup before the rule applies).
        step_every: step schedule: iterations between two steps (0: never).
        gamma: step schedule: factor applied at each step.
    """

    name: str = "poly"
    total: int = 1
    warmup: int = 0
    step_every: int = 0
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {SCHEDULES}")

    @classmethod
    def of(cls, settings: Any, iters_per_epoch: int, total: int) -> Schedule:
        """The schedule of a run's settings (``--schedule``, ``--warmup-iters``, ``--step-every`` or
        ``--step-epochs`` x iterations per epoch, ``--step-gamma``) over ``total`` iterations."""
        step_every = settings.step_every or settings.step_epochs * iters_per_epoch
        return cls(settings.schedule, total, settings.warmup_iters, step_every, settings.step_gamma)

    def factor(self, it: int) -> float:
        """Multiplier at iteration ``it`` (0-based)."""
        if self.warmup and it < self.warmup:
            return (it + 1) / self.warmup
        progress = min(it / max(self.total, 1), 1.0)
        if self.name == "poly":
            return (1.0 - progress) ** POLY_POWER
        if self.name == "cos":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.gamma ** (it // self.step_every) if self.step_every else 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state (last_epoch) goes into checkpoints. (A plain
    function, not the bound method: LambdaLR would store a callable object's attributes.)"""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: schedule.factor(it))
