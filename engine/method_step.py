"""Training steps for the gradient methods of engine/gradients.py (``--weighting pcgrad|cagrad|...|famo``).

Plain training (engine/step.py) back-propagates one weighted sum of the task losses. A gradient method
instead needs each task's gradient on the parameters the tasks share, and decides from them the one
update direction. ``GradientStep`` does that with one backward pass per task and nothing more:

1. forward once; for task k = 1..K, ``torch.autograd.grad`` of L_k with respect to the shared parameters
   and the parameters only task k reaches (its head; a branch's layers after the last fusion point);
2. the shared gradients are the rows of G (K, P), P = the number of shared parameters: the only extra
   memory is these K copies;
3. under torchrun, G and the task-only gradients are averaged over the ranks *before* the method sees
   them (DDP's own reducer is bypassed with ``no_sync``: every rank then aggregates the same G and
   applies the same update, so 2 processes equal 1 process with the same global batch);
4. with fp16, G is unscaled first (Nash-MTL's weights are not scale-equivariant), the direction d is
   written into the shared ``.grad`` scaled again, and the GradScaler's ``step`` then unscales every
   gradient and skips the step on inf / NaN exactly as plain training does (a non-finite G gives a NaN d);
5. d goes into the shared parameters' ``.grad``; every other parameter keeps the gradient of the one task
   that reaches it, unweighted (as LibMTL and the PCGrad, MGDA and CAGrad papers treat task-specific
   parameters; Nash-MTL's official code weights them by its alpha instead).

"Shared" is decided by autograd, not by a list: on the first step every trainable parameter's gradient is
taken for every task, and the parameters that more than one task's loss reaches are the shared ones (for
``shared`` the trunk; for ``cross_stitch``, ``nddr`` and ``afa`` every branch up to its last fusion point
and the fusion modules; with ``--fusion-at layer2`` a branch's layer3 and layer4 are its task's own).

``FamoStep``: FAMO needs no per-task gradient: one backward of sum_k w_k L_k with w from the losses, then,
after the optimiser step, the same batch forward again without gradients and FAMO's update from the
losses before and after. Under torchrun the losses are averaged over ranks first, so that every rank keeps
the same FAMO state. The second forward runs in training mode (as the official code) but leaves
BatchNorm's running statistics as they were (the official code updates them a second time).

Both steps also keep, on the device, per-epoch sums of what the gradients say about the tasks' conflict
(``epoch_stats``): the cosine between each pair of task gradients on the shared parameters and each
task's gradient norm (``GradientStep`` only: FAMO has no per-task gradients).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import all_reduce_sum
from .precision import autocast
from .step import TrainStep
from .weighting import GradientMethod


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def _no_sync(net: nn.Module) -> Any:
    """DDP's reducer off: the per-task gradients are averaged by hand (averaging each backward's result
    would average d per rank, which is not the method applied to the global G)."""
    return net.no_sync() if isinstance(net, nn.parallel.DistributedDataParallel) else nullcontext()


class GradientStep(TrainStep):
    """One step of a gradient method (module docstring). Same arguments as ``TrainStep``; the weighting
    is a ``engine.weighting.GradientMethod`` whose aggregator maps G to (d, w)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params = [p for p in _unwrap(self.net).parameters() if p.requires_grad]
        self.shared_params: list[Tensor] = []  # found on the first step
        self.own: list[list[Tensor]] = []  # per task, the parameters only it reaches
        k = len(self.tasks)
        self.cos_sum = torch.zeros(k, k, device=self.device)
        self.norm_sum = torch.zeros(k, device=self.device)
        self.n_stats = 0

    @property
    def reports_weights(self) -> bool:
        return self.weighting.reports_weights

    def _layout(self, grads: list[tuple[Tensor | None, ...]]) -> None:
        """Shared = reached by more than one task's loss; the rest belongs to the one task that reaches it."""
        reach = [sum(g[i] is not None for g in grads) for i in range(len(self.params))]
        self.shared_params = [p for p, r in zip(self.params, reach) if r > 1]
        self.own = [[p for p, g, r in zip(self.params, gk, reach) if r == 1 and g is not None] for gk in grads]
        if not self.shared_params:
            raise ValueError(
                "no parameter is reached by more than one task's loss: a gradient method has nothing "
                "to combine (use a fusion that shares parameters)"
            )

    def _task_grads(self, losses: list[Tensor]) -> tuple[Tensor, list[list[Tensor | None]]]:
        """G (K, P) on the shared parameters and, per task, the gradients of its own parameters."""
        scale = self.scaler.scale if self.scaler is not None else (lambda x: x)
        k = len(losses)
        first = not self.shared_params
        if first:  # every parameter, to find which ones the tasks share
            raw = [
                torch.autograd.grad(scale(loss), self.params, retain_graph=True, allow_unused=True) for loss in losses
            ]
            self._layout(raw)
            index = {id(p): i for i, p in enumerate(self.params)}
            shared_g = [[g[index[id(p)]] for p in self.shared_params] for g in raw]
            own_g = [[g[index[id(p)]] for p in own] for g, own in zip(raw, self.own)]
            del raw
        else:
            shared_g, own_g = [], []
            for j, loss in enumerate(losses):
                wanted = self.shared_params + self.own[j]
                g = torch.autograd.grad(scale(loss), wanted, retain_graph=j < k - 1, allow_unused=True)
                shared_g.append(list(g[: len(self.shared_params)]))
                own_g.append(list(g[len(self.shared_params) :]))
        size = sum(p.numel() for p in self.shared_params)
        G = torch.zeros(k, size, device=self.device, dtype=self.shared_params[0].dtype)  # the parameters' (float32)
        for j, row in enumerate(shared_g):
            offset = 0
            for p, g in zip(self.shared_params, row):
                if g is not None:  # None: the task does not reach this parameter (a zero gradient)
                    G[j, offset : offset + p.numel()] = g.reshape(-1)
                offset += p.numel()
            row.clear()  # one task's copy at a time besides G
        return G, own_g

    def _average_over_ranks(self, G: Tensor) -> None:
        """The mean over ranks of G and of every task-only gradient (one flat all-reduce each)."""
        world = self.dist.world_size
        all_reduce_sum(G).div_(world)
        own = [p.grad for group in self.own for p in group if p.grad is not None]
        if own:
            flat = torch.cat([g.reshape(-1) for g in own])
            all_reduce_sum(flat).div_(world)
            offset = 0
            for g in own:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def _record(self, G: Tensor) -> None:
        """Per-epoch sums of the pairwise cosines and the norms of the task gradients (on the device)."""
        gram = G @ G.T
        norms = gram.diagonal().clamp_min(0).sqrt()
        denom = torch.outer(norms, norms)
        self.cos_sum += torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(G.dtype).tiny), 0.0)
        self.norm_sum += norms
        self.n_stats += 1

    def epoch_stats(self) -> dict[str, float]:
        """``grad/cos/<t1>/<t2>`` (t1 before t2) and ``grad/norm/<task>``, the epoch's means; resets the sums.
        Read once per epoch (the only host read of these)."""
        if self.n_stats == 0:
            return {}
        cos, norms = (self.cos_sum / self.n_stats).tolist(), (self.norm_sum / self.n_stats).tolist()
        tasks = self.tasks
        out = {f"cos/{a}/{b}": cos[i][j] for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
        out.update({f"norm/{t}": norms[i] for i, t in enumerate(tasks)})
        self.cos_sum.zero_()
        self.norm_sum.zero_()
        self.n_stats = 0
        return out

    def __call__(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with _no_sync(self.net):
            with autocast(self.device, self.amp):
                out = self.net(*self.family.inputs(batch))
            losses = self.family.losses(out, batch)
            stacked = [losses[t] for t in self.tasks]
            G, own_g = self._task_grads(stacked)
        for params, grads in zip(self.own, own_g):
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        if self.dist is not None and self.dist.distributed:
            self._average_over_ranks(G)
        scale = self.scaler.get_scale() if self.scaler is not None else 1.0  # a host read, fp16 only
        if scale != 1.0:
            G.div_(scale)
        self._record(G)
        d, w = self.weighting.aggregator(G)  # reads G G^T (K x K) on the host: the methods' one sync
        if scale != 1.0:
            d = d * scale
        offset = 0
        for p in self.shared_params:
            p.grad = d[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        if w is not None:
            self.weighting.last.copy_(w.detach().float())
        self._optimise()
        return torch.stack(stacked).detach(), self.weighting.last.clone()


class FamoStep(TrainStep):
    """FAMO (module docstring): one backward of sum_k w_k L_k, then FAMO's update from a second forward
    of the same batch without gradients. Same arguments as ``TrainStep``."""

    def epoch_stats(self) -> dict[str, float]:
        return {}

    def _global(self, losses: Tensor) -> Tensor:
        """The task losses averaged over ranks (every rank keeps the same FAMO state)."""
        losses = losses.detach().float().clone()
        if self.dist is not None and self.dist.distributed:
            all_reduce_sum(losses).div_(self.dist.world_size)
        return losses

    def __call__(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        famo = self.weighting.aggregator
        self.optimizer.zero_grad(set_to_none=True)
        inputs = self.family.inputs(batch)
        with autocast(self.device, self.amp):
            out = self.net(*inputs)
        losses = self.family.losses(out, batch)
        stacked = torch.stack([losses[t] for t in self.tasks])
        before = self._global(stacked)
        w = famo.weights(before)
        self.weighting.last.copy_(w)
        total = (w.to(stacked.dtype) * stacked).sum()
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        self._optimise()
        model = _unwrap(self.net)
        buffers = [b.clone() for b in model.buffers()]  # BatchNorm's running statistics stay as they were
        with torch.no_grad(), autocast(self.device, self.amp):
            again = self.family.losses(self.net(*inputs), batch)
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
        famo.update(before, self._global(torch.stack([again[t] for t in self.tasks])))
        return stacked.detach(), w.detach().clone()


def make_step(
    net: nn.Module, family: Any, optimizer: torch.optim.Optimizer, weighting: Any, **kwargs: Any
) -> TrainStep:
    """The training step for the run's ``--weighting``: a loss weighting's ``TrainStep``, FAMO's ``FamoStep``,
    or a gradient method's ``GradientStep`` (keyword arguments as ``TrainStep``)."""
    if isinstance(weighting, GradientMethod):
        cls = GradientStep if weighting.needs_gradients else FamoStep
        return cls(net, family, optimizer, weighting, **kwargs)
    return TrainStep(net, family, optimizer, weighting, **kwargs)
