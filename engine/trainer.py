"""The training loop shared by train_pixel.py and train_image.py.

A script supplies a ``TaskFamily`` (datasets, losses, metrics and pictures of its tasks);
everything else — arguments, model and optimiser set-up, AMP, DDP, checkpoints, exact
resume, signals, logging — lives here once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import DataError
from models import ModelConfig, MultiTaskNet, init_from_stage1, model_from_config
from models.afa import DEFAULT_TAU, GRAD_MODES
from models.fusion import FUSION_INITS, FUSIONS

from .checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .logger import RunLogger, setup_console
from .metrics import validation_score
from .runs import RunError, check_run_folders, resume_run, schedule_length, start_run_folder
from .sampler import EpochSampler, SeededDataset
from .schedule import SCHEDULES, build_scheduler
from .weighting import DEFAULT_DWA_TEMP, DEFAULT_GRADNORM_ALPHA, WEIGHTINGS, LossWeighting, build_weighting

log = logging.getLogger(__name__)
BIG = 2 ** 62  # "no non-finite loss seen yet" in the on-device tracker


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


class NonFiniteLoss(Exception):
    pass


class TaskFamily:
    """What a training script plugs into the loop: one subclass per family (engine/tasks.py,
    engine/series.py), built from the script's parsed arguments.

    ``kind`` names the family ('pixel', 'image', 'series'); ``tasks`` are its task names.
    """

    kind: str = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def datasets(self) -> tuple[Dataset, Dataset, Callable, Callable]:
        """(train, val, train_transform, eval_transform): raw-sample datasets and their transforms."""
        raise NotImplementedError

    def tasks(self, train: Dataset) -> dict[str, int]:
        """{task: output channels} of the model, which may depend on the data (NYUv2's classes)."""
        raise NotImplementedError

    def losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """{task: scalar loss} of a batch (unweighted; the loss weighting combines them)."""
        raise NotImplementedError

    def evaluate(self, model_fn: Callable[..., dict[str, Tensor]], loader: Iterable, device: torch.device,
                 limit: int | None, panels: list[np.ndarray] | None = None) -> dict[str, float]:
        """Pooled metrics (reduced over ranks); when ``panels`` is a list, example pictures (H, W, 3)
        of the first samples are appended to it."""
        raise NotImplementedError

    def inputs(self, batch: dict[str, Any]) -> tuple[Tensor, ...]:
        """The model's positional inputs: the image."""
        return (batch["image"],)

    def config(self, train: Dataset) -> dict[str, Any]:
        """The model_config of a new run: a two-task network (models.ModelConfig) from the flags."""
        a = self.args
        return ModelConfig(kind=self.kind, fusion=a.fusion, grad_mode=a.grad_mode, tasks=self.tasks(train),
                           input_size=a.crop_size, tau=a.tau, protect_tasks=a.protect_tasks, fusion_at=a.fusion_at,
                           fusion_init=a.fusion_init, **({"depths": a.depths} if a.depths else {})).to_dict()


def common_args(parser: argparse.ArgumentParser, kind: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """Flags shared by both training scripts (the stable ones keep their names); ``defaults``
    holds the family's recipe (crop_size, epochs, batch_size, lr, weight_decay, schedule ...)."""
    p = parser
    p.add_argument("--data-root", help="dataset folder (see README: prepared NYUv2 / Adience); required, except "
                                       "with --resume, which takes the run's")
    p.add_argument("--fusion", choices=FUSIONS, default="none",
                   help="none = stage 1 (single-task pair); shared (hard sharing, from ImageNet); cross_stitch, "
                        "nddr, afa = stage 2 (README: the methods)")
    p.add_argument("--fusion-at", nargs="+", default=None, metavar="POINT",
                   help="fusion points, e.g. layer3 layer4.1 layer4.* (default: the method's, README)")
    p.add_argument("--fusion-init", choices=FUSION_INITS, default="reference",
                   help="self: AFA layers start passing 0.9 of a branch's own features (cross-stitch's start)")
    p.add_argument("--grad-mode", choices=GRAD_MODES, default="protect", help="AFA gradient mode (models/afa.py)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="adaptive mode's norm-ratio threshold")
    p.add_argument("--protect-tasks", nargs="+", default=None,
                   help="protect mode: tasks whose branch is shielded (default: task 1, as the original code's "
                        "latest commit; both tasks as its older commits)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="loss weighting (default: dwa when the tasks interact, the original recipe; equal for none)")
    p.add_argument("--dwa-temp", type=float, default=DEFAULT_DWA_TEMP, help="DWA temperature")
    p.add_argument("--gradnorm-alpha", type=float, default=DEFAULT_GRADNORM_ALPHA, help="GradNorm asymmetry")
    p.add_argument("--depths", type=int, nargs=4, default=None, metavar="N",
                   help="bottlenecks per ResNet stage (default 3 4 6 3, ResNet-50; fewer only for smoke tests, "
                        "from random weights)")
    p.add_argument("--init", default=None, help="stage 2: the stage-1 checkpoint (--fusion none) to start from")
    p.add_argument("--init-heads", action="store_true",
                   help="with --init, also take the task heads (the reference takes the trunks only)")
    p.add_argument("--pretrained", default="imagenet",
                   help="backbone init for stage 1: imagenet (torchvision download), PATH to a ResNet-50 "
                        "state dict, or none")
    p.add_argument("--epochs", type=int, help="total epochs (with --resume: continue until this many)")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float, help="base learning rate (backbone; groups scale it)")
    p.add_argument("--lr-mult", type=json.loads, default=None,
                   help='JSON multipliers per group (backbone, fusion, head), e.g. \'{"fusion": 100}\' '
                        '(default: per method, README)')
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup-iters", type=int, default=0, help="linear warm-up iterations")
    p.add_argument("--step-every", type=int, default=0, help="step schedule: iterations between lr steps")
    p.add_argument("--step-epochs", type=int, default=0, help="step schedule: epochs between lr steps (if --step-every "
                                                              "is 0)")
    p.add_argument("--step-gamma", type=float, default=0.1, help="step schedule: lr factor at each step")
    p.add_argument("--crop-size", type=int,
                   help="square input size of the network (sets SAM's size)")
    p.add_argument("--limit-batches", type=int, default=None,
                   help="at most N batches per epoch in training and in validation (smoke runs)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast precision (fp16 uses a gradient scaler and needs CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (fast with AMP)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"checkpoint path (default weight/{kind}_<single|afa>_last.pth); "
                                               "the best-by-validation model is saved beside it as *_best.pth")
    p.add_argument("--logdir", default=None, help="TensorBoard + log.jsonl folder (default runs/<name>)")
    p.add_argument("--resume", default=None,
                   help="checkpoint to continue from, exactly and with the run's own settings (README: resume)")
    p.add_argument("--overwrite", action="store_true",
                   help="a fresh run may replace the run already in --out / --logdir (its files are removed)")
    p.add_argument("--log-every", type=int, default=10, help="iterations between loss/lr scalars")
    p.add_argument("--precise-bn", type=int, default=0, metavar="N",
                   help="before each validation, re-estimate BatchNorm statistics over N training batches "
                        "(helps small-batch or from-scratch runs; 0 = off, the reference recipe)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the training data held out for validation")
    p.set_defaults(**defaults)
    return p


def run_name(args: argparse.Namespace, kind: str) -> str:
    name = f"{kind}_{'single' if args.fusion == 'none' else args.fusion}"
    return name + (f"_fold{args.test_fold}" if getattr(args, "test_fold", None) is not None else "")


def best_path(out: str | Path) -> Path:
    out = Path(out)
    stem = out.stem[: -len("_last")] if out.stem.endswith("_last") else out.stem
    return out.with_name(f"{stem}_best{out.suffix or '.pth'}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


class StopFlag:
    """Set by SIGINT / SIGTERM; the loop saves a resumable checkpoint at the next batch boundary."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(f"received {signal.Signals(signum).name}: saving a resumable checkpoint after this batch")

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def make_loader(dataset: Dataset, batch: int, workers: int, sampler: EpochSampler, device: torch.device,
                drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        # The loader draws worker base seeds from its own generator, so the global RNG (dropout)
        # is untouched by iterator creation; samples are seeded by SeededDataset anyway.
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:  # the images (and any other 4-D input)
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


@dataclass
class TrainState:
    """Where training stands; saved in every resumable checkpoint so that a run resumes exactly.

    Mid-epoch (``batch_in_epoch`` > 0) the epoch's running sums of the unweighted task losses and
    of their weights are kept too: DWA's next weights are computed from the whole epoch's mean.
    """

    epoch: int = 0
    iteration: int = 0
    batch_in_epoch: int = 0
    best: float = -math.inf
    best_metrics: dict[str, float] | None = None
    epoch_loss_sum: list[float] = field(default_factory=list)
    epoch_weight_sum: list[float] = field(default_factory=list)
    schedule_total: int = 0  # iterations of the lr schedule (an extended run's is longer than epochs x steps)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            if f.name in d:
                setattr(self, f.name, d[f.name])


@dataclass
class EpochResult:
    """What one (possibly interrupted) training epoch did."""

    losses: dict[str, float]  # epoch mean of each unweighted task loss, over all ranks
    weights: dict[str, float]  # mean weight each task's loss had in the epoch's steps
    interrupted: bool = False  # a signal stopped it at a batch boundary (the state is saved for resume)


def train_step(model: nn.Module, batch: dict[str, Any], family: TaskFamily, optimizer: torch.optim.Optimizer,
               weighting: LossWeighting, shared: list[Tensor], *, amp: str, device: torch.device,
               scaler: torch.amp.GradScaler | None = None, dist: DistInfo | None = None) -> Tensor:
    """One optimisation step on a batch already on the device; returns the unweighted task losses
    (K,) in ``weighting.tasks`` order, detached and still on the device (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp):
        out = model(*family.inputs(batch))
    losses = family.losses(out, batch)
    total = weighting.combine(losses, shared)
    (scaler.scale(total) if scaler is not None else total).backward()
    if dist is not None and dist.distributed:
        # The weighting's learned parameters live outside DDP: average their gradients by hand.
        for p in weighting.parameters():
            if p.grad is not None:
                all_reduce_sum(p.grad).div_(dist.world_size)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    weighting.after_step()
    return torch.stack([losses[t] for t in weighting.tasks]).detach()


def train_one_epoch(model: nn.Module, family: TaskFamily, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, scaler, weighting: LossWeighting, shared: list[Tensor], args: argparse.Namespace,
                    dist: DistInfo, logger: RunLogger, state: TrainState, stop: StopFlag) -> EpochResult:
    """One epoch of training from ``state.batch_in_epoch`` on. ``state`` advances with every step;
    when a signal arrives, the epoch stops at a batch boundary with the running sums in ``state``."""
    model.train()
    device = dist.device
    tasks = weighting.tasks
    k = len(tasks)
    # Running sums stay on the device: no host sync per iteration.
    loss_sum = torch.tensor(state.epoch_loss_sum or [0.0] * k, device=device)
    weight_sum = torch.tensor(state.epoch_weight_sum or [0.0] * k, device=device)
    window = torch.zeros(k, device=device)
    first_bad = torch.full((k,), BIG, dtype=torch.int64, device=device)
    n_window = 0
    total = len(loader)
    if args.limit_batches is not None:
        total = min(total, args.limit_batches - state.batch_in_epoch)
    bar = tqdm(total=max(total, 0), desc=f"epoch {state.epoch + 1}/{args.epochs}", disable=not dist.is_main,
               dynamic_ncols=True, leave=False)
    n_done = 0
    interrupted = False
    for batch in loader:
        if n_done >= total:
            break
        batch = to_device(batch, device, args.channels_last)
        weights = torch.stack([w.to(device) for w in weighting.weights().values()])  # this step's weights
        vec = train_step(model, batch, family, optimizer, weighting, shared, amp=args.amp, device=device,
                         scaler=scaler, dist=dist)
        scheduler.step()
        first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(vec), BIG, state.iteration))
        loss_sum += vec
        weight_sum += weights
        window += vec
        n_done, n_window = n_done + 1, n_window + 1
        state.iteration += 1
        state.batch_in_epoch += 1
        bar.update(1)
        at_log = state.iteration % args.log_every == 0
        if at_log or device.type == "cpu":
            check_finite(first_bad, tasks)
        if at_log:
            means = (window / n_window).tolist()
            logger.scalars(dict(zip(tasks, means)), state.iteration, head="loss/")
            logger.scalars({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)},
                           state.iteration, head="opt/")
            bar.set_postfix({t: f"{v:.3f}" for t, v in zip(tasks, means)})
            window.zero_()
            n_window = 0
        if should_stop(stop, dist, at_log):
            interrupted = True
            break
    bar.close()
    check_finite(first_bad, tasks)
    if interrupted:
        state.epoch_loss_sum, state.epoch_weight_sum = loss_sum.tolist(), weight_sum.tolist()
        return EpochResult({}, {}, interrupted=True)
    steps = max(state.batch_in_epoch, 1)
    if dist.distributed:  # every rank gets the global means (DWA must see the same numbers everywhere)
        all_reduce_sum(loss_sum).div_(dist.world_size)
    state.epoch_loss_sum, state.epoch_weight_sum = [], []
    return EpochResult(dict(zip(tasks, (loss_sum / steps).tolist())), dict(zip(tasks, (weight_sum / steps).tolist())))


def check_finite(first_bad: Tensor, tasks: list[str]) -> None:
    bad = first_bad.cpu()
    if int(bad.min()) < BIG:
        i = int(bad.argmin())
        raise NonFiniteLoss(f"non-finite {tasks[i]} loss at iteration {int(bad[i])}")


def should_stop(stop: StopFlag, dist: DistInfo, at_log: bool) -> bool:
    """Ranks must stop at the same batch: when distributed the flag is agreed on at log steps."""
    if not dist.distributed:
        return bool(stop.signum)
    if not at_log:
        return False
    flag = torch.tensor([1 if stop.signum else 0], device=dist.device)
    return bool(all_reduce_sum(flag).item())


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, loader: DataLoader, n_batches: int, device: torch.device,
                       args: argparse.Namespace, dist: DistInfo,
                       inputs: Callable[[dict[str, Any]], tuple[Tensor, ...]] = lambda b: (b["image"],)) -> None:
    """Precise BN: replace the running statistics (an average over the last, still moving, weights)
    by plain averages over ``n_batches`` training batches with the current weights."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for batch in evaluation_batches(loader, n_batches):
        batch = to_device(batch, device, args.channels_last)
        with autocast(device, args.amp):
            model(*inputs(batch))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
        if dist.distributed:  # every rank evaluates with the same statistics
            for t in (bn.running_mean, bn.running_var):
                all_reduce_sum(t).div_(dist.world_size)


def build_optimizer(model: MultiTaskNet, weighting: LossWeighting, args: argparse.Namespace,
                    device: torch.device) -> torch.optim.Optimizer:
    """SGD over the model's groups (backbone, fusion, head) and, when the weighting learns
    parameters (uncertainty, GradNorm), a 'weighting' group at the base rate without weight decay
    (decay would pull log variances and weights towards 0)."""
    try:
        groups = model.param_groups(args.lr, args.lr_mult, args.weight_decay)
    except ValueError as e:
        raise UserError(f"--lr-mult {json.dumps(args.lr_mult)}: {e}") from None
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"name": "weighting", "params": learned, "lr": args.lr, "lr_mult": 1.0, "weight_decay": 0.0})
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, **kw)


def default_weighting(model: nn.Module) -> str:
    """The original recipe: DWA (T = 2) when the tasks interact; a plain sum for the single-task pair
    (and for a family with one task)."""
    return "equal" if len(model.tasks) < 2 or model.config.fusion == "none" else "dwa"


def shared_parameters(model: nn.Module) -> list[Tensor]:
    """GradNorm's W: the last parameters both tasks reach (none outside the two-task networks)."""
    return model.shared_parameters() if isinstance(model, MultiTaskNet) else []


def make_weighting(model: nn.Module, args: argparse.Namespace) -> LossWeighting:
    name = args.weighting or default_weighting(model)
    if name == "gradnorm" and not shared_parameters(model):
        raise UserError(f"--weighting gradnorm balances gradients on parameters both tasks share; "
                        f"--fusion {model.config.fusion} has none")
    try:
        return build_weighting(name, model.tasks, dwa_temp=args.dwa_temp, gradnorm_alpha=args.gradnorm_alpha)
    except ValueError as e:
        raise UserError(str(e)) from None


def checkpoint_state(model: MultiTaskNet, optimizer, scheduler, scaler, weighting: LossWeighting,
                     state: TrainState, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": model.state_dict(), "model_config": model.config.to_dict(), "kind": model.config.kind,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "weighting": weighting.state_dict(), "train_state": state.state_dict(), "rng": capture_rng(),
        "args": plain_args(args),
    }


def best_state(full: dict[str, Any]) -> dict[str, Any]:
    """The best-by-validation file: the model, how to rebuild it and its scores, without the
    optimiser and RNG state (it is for evaluation and stage-2 initialisation, not for resuming;
    about half the size of a resumable checkpoint)."""
    train = full["train_state"]
    return {**{k: full[k] for k in ("model", "model_config", "kind", "args")},
            **{k: train[k] for k in ("epoch", "iteration", "best", "best_metrics")}}


def load_stage1(path: str, config: ModelConfig) -> dict[str, Tensor]:
    """The state dict of a stage-1 checkpoint that fits ``config`` (same kind and tasks, fusion 'none')."""
    ck = load_checkpoint(path)
    src = ck.get("model_config") or {}
    problems = []
    if src.get("kind") != config.kind:
        problems.append(f"kind {src.get('kind')!r} (expected {config.kind!r})")
    if src.get("fusion") != "none":
        problems.append(f"fusion {src.get('fusion')!r} (expected 'none': a stage-1 checkpoint)")
    if src.get("tasks") and dict(src["tasks"]) != dict(config.tasks):
        problems.append(f"tasks {src['tasks']} (expected {config.tasks})")
    if problems:
        raise UserError(f"--init {path}: not a stage-1 checkpoint for this network: " + "; ".join(problems))
    return ck["model"]


def build_network(args: argparse.Namespace, family: TaskFamily, train_set: Any, resume: dict[str, Any] | None,
                  dist: DistInfo) -> MultiTaskNet:
    """The network of a resumed run (from its stored config), or a new one from the flags with its
    starting weights: a stage-1 checkpoint (--init) or ImageNet backbones (--pretrained)."""
    if resume is not None:
        return model_from_config(resume["model_config"])
    try:
        config = family.config(train_set)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = model_from_config(config)
    if args.init:
        if model.config.fusion == "shared":
            raise UserError(f"--init {args.init}: hard sharing ('shared') starts from ImageNet weights "
                            "(--pretrained), not from a single-task checkpoint")
        report = init_from_stage1(model, load_stage1(args.init, model.config), heads=args.init_heads)
        if dist.is_main:
            what = "trunks and heads" if args.init_heads else "trunks"
            log.info(f"init from {args.init}: {len(report['loaded'])} tensors loaded ({what}); "
                  f"{len(report['kept'])} kept as initialised")
    elif args.pretrained and args.pretrained != "none":
        try:
            unused = model.load_backbone_weights(args.pretrained)
        except ValueError as e:
            raise UserError(f"--pretrained {args.pretrained}: {e}") from None
        except OSError as e:  # urllib's URLError is an OSError: no network, proxy, full disk ...
            if args.pretrained != "imagenet":
                raise
            raise UserError(f"--pretrained imagenet: could not get torchvision's ResNet-50 weights ({e}); "
                            "use --pretrained PATH (a saved state dict) or --pretrained none") from None
        if dist.is_main:
            log.info(f"backbones from {args.pretrained}; unused keys: {', '.join(unused) or 'none'}")
    return model


def epoch_summary(epoch: int, epochs: int, result: EpochResult, metrics: dict[str, float], score: float,
                  improved: bool, seconds: float) -> str:
    """The console line of an epoch, for people."""
    losses = "  ".join(f"{t} {v:.4f}" for t, v in result.losses.items())
    weights = "  ".join(f"{t} {v:.3f}" for t, v in result.weights.items())
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    return (f"epoch {epoch}/{epochs} ({seconds:.0f} s)\n  train loss  {losses}   (weights {weights})\n"
            f"  val         {shown}\n  score {score:.4f}{'  (best so far)' if improved else ''}")


def main_loop(args: argparse.Namespace, family: TaskFamily, explicit: set[str] | None = None) -> int:
    """Set everything up from ``args`` and train. Returns the process exit code.

    ``explicit``: the dests given on the command line (``runs.parse_with_explicit``); with
    ``--resume`` they are checked against the run's stored settings (engine/runs.py)."""
    setup_console(is_main=int(os.environ.get("RANK", "0")) == 0)  # torchrun's rank, before any output
    try:
        return _main_loop(args, family, explicit)
    except CheckpointWriteError as e:
        print(f"error: {e}; stopped", file=sys.stderr)
        return 4
    except (UserError, RunError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}; stopped, the last good checkpoint is kept", file=sys.stderr)
        return 3
    finally:
        cleanup()


def _main_loop(args: argparse.Namespace, family: TaskFamily, explicit: set[str] | None) -> int:
    resume = resume_run(args, family.kind, explicit)  # --resume: the run's own settings, checked
    if args.amp == "fp16" and args.device == "cpu":
        raise UserError("--amp fp16 needs CUDA (use --amp bf16 on CPU)")
    dist = init_distributed(args.device)
    if args.amp == "fp16" and dist.device.type != "cuda":
        raise UserError("--amp fp16 needs CUDA (use --amp bf16 on CPU)")
    name = run_name(args, family.kind)
    args.out = args.out or str(Path("weight") / f"{name}_last.pth")
    args.logdir = args.logdir or str(Path("runs") / name)
    replaced = check_run_folders(args, best_path(args.out), resume)  # never write over another run
    seed_everything(args.seed)
    if dist.device.type == "cpu":
        # The AFA softmax weights saturate and leave subnormal floats, which x86 handles slowly
        # (about +8 % per step); flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)

    if resume is not None and "train_state" not in resume:
        raise UserError(f"--resume {args.resume}: written by an older version of this project (no train_state); "
                        "start a new run")
    train_set, val_set, train_tf, eval_tf = family.datasets()
    model = build_network(args, family, train_set, resume, dist)
    model.to(dist.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if isinstance(model, MultiTaskNet):
        model.monitor_fusions()
    weighting = make_weighting(model, args).to(dist.device)
    shared = shared_parameters(model) if args.weighting == "gradnorm" else []
    optimizer = build_optimizer(model, weighting, args, dist.device)
    train_ds = SeededDataset(train_set, train_tf, args.seed)
    val_ds = SeededDataset(val_set, eval_tf, args.seed)
    train_sampler = EpochSampler(len(train_ds), args.seed, True, dist.rank, dist.world_size)
    val_sampler = EpochSampler(len(val_ds), args.seed, False, dist.rank, dist.world_size, pad=False)
    per_rank = len(train_sampler)
    if per_rank < 2:  # BatchNorm cannot train on single samples (ASPP's pooled branch is 1x1)
        raise UserError(f"{args.data_root}: {len(train_ds)} training samples ({per_rank} per process); need at least 2")
    if per_rank < args.batch_size:
        if dist.is_main:
            log.info(f"note: {per_rank} training samples per process, fewer than --batch-size {args.batch_size}: "
                  f"using batches of {per_rank}")
        args.batch_size = per_rank
    # drop_last: a last batch of one sample would break BatchNorm in training mode.
    train_loader = make_loader(train_ds, args.batch_size, args.workers, train_sampler, dist.device, drop_last=True)
    val_loader = make_loader(val_ds, max(1, args.batch_size // 2) if family.kind == "pixel" else args.batch_size,
                             args.workers, val_sampler, dist.device, drop_last=False)
    # Precise BN reads training batches through its own sampler, so the training order is untouched.
    bn_sampler = EpochSampler(len(train_ds), args.seed + 1, True, dist.rank, dist.world_size)
    bn_loader = make_loader(train_ds, args.batch_size, 0, bn_sampler, dist.device, drop_last=True)
    iters_per_epoch = len(train_loader) if args.limit_batches is None else min(len(train_loader), args.limit_batches)
    schedule_total = schedule_length(args, iters_per_epoch, resume)  # stored; --epochs extends it on resume
    step_every = args.step_every or args.step_epochs * iters_per_epoch
    scheduler = build_scheduler(optimizer, schedule_total, args.schedule, args.warmup_iters, step_every,
                                args.step_gamma)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    state = TrainState(schedule_total=schedule_total)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        weighting.load_state_dict(resume["weighting"])
        state.load_state_dict(resume["train_state"])
        state.schedule_total = schedule_total  # --epochs may have extended the run (engine/runs.py)
        restore_rng(resume["rng"])
        if dist.is_main:
            log.info(f"resumed {args.resume}: epoch {state.epoch}, iteration {state.iteration}")

    net: nn.Module = model
    if dist.distributed:
        if args.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[dist.local_rank] if dist.device.type == "cuda"
                                                  else None)
    start_run_folder(args, replaced, dist.is_main)  # --overwrite removes the old run's files; args.json
    logger = RunLogger(args.logdir, dist.is_main)
    stop = StopFlag()
    stop.install()

    def save(path: str | Path, model_only: bool = False) -> None:
        if dist.is_main:
            full = checkpoint_state(model, optimizer, scheduler, scaler, weighting, state, args)
            save_checkpoint(best_state(full) if model_only else full, path)

    def model_fn(*xs: Tensor) -> dict[str, Tensor]:
        # The unwrapped model: ranks evaluate unequal shares, and DDP's forward would try to
        # synchronise buffers with ranks that have already finished.
        if args.channels_last:
            xs = tuple(x.contiguous(memory_format=torch.channels_last) for x in xs)
        with autocast(dist.device, args.amp):
            return {k: v.float() for k, v in model(*xs).items()}

    try:
        while state.epoch < args.epochs:
            epoch = state.epoch
            train_sampler.set_epoch(epoch, skip_samples=state.batch_in_epoch * args.batch_size)
            t0 = time.time()
            result = train_one_epoch(net, family, train_loader, optimizer, scheduler, scaler, weighting, shared, args,
                                     dist, logger, state, stop)
            if result.interrupted:
                save(args.out)
                return 128 + (stop.signum or signal.SIGTERM)
            weighting.end_epoch(result.losses)  # DWA: the next epoch's weights, saved with the state below
            fusion = model.fusion_stats() if isinstance(model, MultiTaskNet) else {}
            if args.precise_bn:
                bn_sampler.set_epoch(epoch)
                recompute_bn_stats(model, bn_loader, args.precise_bn, dist.device, args, dist, family.inputs)
            model.eval()
            panels: list[np.ndarray] = []
            metrics = family.evaluate(model_fn, val_loader, dist.device, args.limit_batches,
                                      panels if dist.is_main else None)
            score = validation_score(metrics)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            # A NaN score (e.g. no valid pixel in a tiny validation set) never blocks the first best.
            improved = score > state.best or not math.isfinite(state.best)
            if improved:
                state.best, state.best_metrics = score, metrics
            train = {**{f"loss/{t}": v for t, v in result.losses.items()},
                     **{f"weight/{t}": v for t, v in result.weights.items()}}
            logger.scalars(train, state.epoch, head="train/")
            logger.scalars(fusion, state.epoch, head="fusion/")
            logger.scalars(metrics, state.epoch, head="val/")
            logger.scalars({"score": score}, state.epoch, head="val/")
            for i, img in enumerate(panels):
                logger.image(f"val/example_{i}", img, state.epoch)
            logger.epoch_line({"epoch": state.epoch, "iteration": state.iteration, "time_s": time.time() - t0,
                               **{f"train/{k}": v for k, v in train.items()},
                               **{f"fusion/{k}": v for k, v in fusion.items()},
                               **{f"val/{k}": v for k, v in metrics.items()}, "val/score": score})
            logger.flush()
            save(args.out)
            if improved:
                save(best_path(args.out), model_only=True)
            if dist.is_main:
                log.info(epoch_summary(state.epoch, args.epochs, result, metrics, score, improved, time.time() - t0))
            barrier()
    finally:
        stop.restore()
        logger.close()
    if dist.is_main:
        log.info(f"done: {args.out} (latest), {best_path(args.out)} (best, score {state.best:.4f})")
    return 0


def evaluation_batches(loader: Iterable, limit: int | None) -> Iterable:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        yield batch
