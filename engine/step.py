"""One optimisation step of the training loop (and of bench.py, which times exactly this)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import DistInfo, all_reduce_sum
from .precision import autocast
from .weighting import LossWeighting

CPU = torch.device("cpu")


class TrainStep:
    """Forward under the run's autocast, the family's task losses, the loss weighting, backward (scaled
    for fp16), the optimiser and the learning-rate schedule. Nothing reads a tensor on the host: a step
    never waits for the device.

    Args:
        net: the network to train (DDP-wrapped when distributed).
        family: answers ``inputs(batch)`` and ``losses(out, batch)`` (families/base.py).
        optimizer: over the network's (and the weighting's learned) parameters.
        weighting: combines the task losses (engine/weighting.py).
        scheduler: stepped once per step (None: no schedule, as in bench.py).
        scaler: the fp16 GradScaler, or None.
        amp: 'none', 'bf16' or 'fp16'.
        device: where the batch lives.
        dist: ranks; the weighting's learned parameters live outside DDP and are averaged by hand.
        shared: the parameters GradNorm balances the tasks' gradients on (empty otherwise).
        freeze_bn: BatchNorm layers stay in eval mode while training (``train_mode``).
    """

    reports_weights = True  # the weights it returns are worth logging (engine/method_step.py: not PCGrad's)

    def __init__(
        self,
        net: nn.Module,
        family: Any,
        optimizer: torch.optim.Optimizer,
        weighting: LossWeighting,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scaler: torch.amp.GradScaler | None = None,
        amp: str = "none",
        device: torch.device = CPU,
        dist: DistInfo | None = None,
        shared: Sequence[Tensor] = (),
        freeze_bn: bool = False,
    ) -> None:
        self.net, self.family, self.optimizer, self.weighting = net, family, optimizer, weighting
        self.scheduler, self.scaler, self.amp, self.device, self.dist = scheduler, scaler, amp, device, dist
        self.shared = list(shared)
        self.freeze_bn = freeze_bn

    def train_mode(self) -> None:
        """The network in training mode; with ``freeze_bn`` its BatchNorm layers in eval mode (running
        statistics used and kept; their affine weights still learn)."""
        self.net.train()
        if self.freeze_bn:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def epoch_stats(self) -> dict[str, float]:
        """Per-epoch gradient statistics (engine/method_step.py); none for a loss weighting."""
        return {}

    def _optimise(self) -> None:
        """The optimiser step (through the fp16 scaler, which skips it on inf / NaN), then the
        weighting's and the schedule's."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.weighting.after_step()
        if self.scheduler is not None:
            self.scheduler.step()

    @property
    def tasks(self) -> list[str]:
        return self.weighting.tasks

    def __call__(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """One step on a batch already on the device. Returns the unweighted task losses and the weights
        they had, both (K,) in ``tasks`` order, detached and still on the device."""
        weights = torch.stack([w.to(self.device) for w in self.weighting.weights().values()])
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            out = self.net(*self.family.inputs(batch))
        losses = self.family.losses(out, batch)
        total = self.weighting.combine(losses, self.shared)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        if self.dist is not None and self.dist.distributed:
            for p in self.weighting.parameters():
                if p.grad is not None:
                    all_reduce_sum(p.grad).div_(self.dist.world_size)
        self._optimise()
        return torch.stack([losses[t] for t in self.tasks]).detach(), weights
