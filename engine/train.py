"""The training loop of train_pixel.py, train_image.py and train_series.py.

    main(args, Family)         set up -> resume -> the epoch loop -> finish
      train_one_epoch(...)     the steps of one epoch (engine/step.py)
      validate(...)            precise BN, then the family's metrics on the validation split
      end_epoch(...)           score, logs, checkpoints

The family (families/) answers everything that differs between task families; this module holds
no family policy. Checkpoints follow engine/checkpoint.py's LAYOUT; run safety and resume rules
live in engine/runs.py; the settings are resolved once and frozen (engine/settings.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models import model_from_config

from .checkpoint import best_state, capture_rng, restore_rng, resumable_state, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .errors import HANDLED, NonFiniteLoss, UserError, exit_code
from .inference import model_fn
from .logger import RunLogger, setup_console
from .method_step import make_step
from .precision import check_amp, grad_scaler
from .runs import check_run_folders, explicit_by_default, schedule_length, start_run_folder
from .schedule import Schedule, build_scheduler
from .settings import Settings, resolve
from .setup import (
    Loaders,
    build_network,
    build_optimizer,
    make_weighting,
    recompute_bn_stats,
    seed_everything,
    to_device,
    wrap,
)
from .step import TrainStep

log = logging.getLogger(__name__)
BIG = 2**62  # "no non-finite loss seen yet" in the on-device tracker


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
    weights: dict[str, float]  # mean weight each task's loss had in the epoch's steps (none: PCGrad)
    grads: dict[str, float] = field(default_factory=dict)  # gradient methods: cos/<t1>/<t2>, norm/<t>
    interrupted: bool = False  # a signal stopped it at a batch boundary (the state is saved for resume)


class StopFlag:
    """Set by SIGINT / SIGTERM; the loop saves a resumable checkpoint at the next batch boundary.
    A second signal stops at once. Used as a context manager: the handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(f"received {signal.Signals(signum).name}: saving a resumable checkpoint after this batch")


def should_stop(stop: StopFlag, dist: DistInfo, at_log: bool) -> bool:
    """Ranks must stop at the same batch: when distributed the flag is agreed on at log steps."""
    if not dist.distributed:
        return bool(stop.signum)
    if not at_log:
        return False
    flag = torch.tensor([1 if stop.signum else 0], device=dist.device)
    return bool(all_reduce_sum(flag).item())


def check_finite(first_bad: Tensor, tasks: list[str]) -> None:
    bad = first_bad.cpu()
    if int(bad.min()) < BIG:
        i = int(bad.argmin())
        raise NonFiniteLoss(f"non-finite {tasks[i]} loss at iteration {int(bad[i])}")


class Monitor:
    """What a person sees of the steps: a progress bar, and loss / learning-rate scalars every
    ``log_every`` iterations (on rank 0; the sums stay on the device in between)."""

    def __init__(self, logger: RunLogger, settings: Settings, dist: DistInfo, optimizer: torch.optim.Optimizer) -> None:
        self.logger, self.settings, self.dist, self.optimizer = logger, settings, dist, optimizer

    def bar(self, state: TrainState, total: int) -> tqdm:
        return tqdm(
            total=total,
            desc=f"epoch {state.epoch + 1}/{self.settings.epochs}",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )

    def at_log(self, state: TrainState) -> bool:
        return state.iteration % self.settings.log_every == 0

    def log_window(self, tasks: list[str], means: list[float], iteration: int, bar: tqdm) -> None:
        self.logger.scalars(dict(zip(tasks, means)), iteration, head="loss/")
        self.logger.scalars(
            {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
            iteration,
            head="opt/",
        )
        bar.set_postfix({t: f"{v:.3f}" for t, v in zip(tasks, means)})


def train_one_epoch(step: TrainStep, batches: Any, state: TrainState, monitor: Monitor, stop: StopFlag) -> EpochResult:
    """One epoch of training from ``state.batch_in_epoch`` on. ``state`` advances with every step;
    when a signal arrives, the epoch stops at a batch boundary with the running sums in ``state``."""
    step.train_mode()
    device, tasks, dist = step.device, step.tasks, monitor.dist
    k = len(tasks)
    # Running sums stay on the device: no host sync per iteration.
    loss_sum = torch.tensor(state.epoch_loss_sum or [0.0] * k, device=device)
    weight_sum = torch.tensor(state.epoch_weight_sum or [0.0] * k, device=device)
    window, n_window = torch.zeros(k, device=device), 0
    first_bad = torch.full((k,), BIG, dtype=torch.int64, device=device)
    interrupted = False
    with monitor.bar(state, len(batches)) as bar:
        for batch in batches:
            losses, weights = step(to_device(batch, device, monitor.settings.channels_last))
            first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(losses), BIG, state.iteration))
            loss_sum += losses
            weight_sum += weights
            window += losses
            n_window += 1
            state.iteration += 1
            state.batch_in_epoch += 1
            bar.update(1)
            at_log = monitor.at_log(state)
            if at_log or device.type == "cpu":  # on CPU reading the flags costs nothing
                check_finite(first_bad, tasks)
            if at_log:
                monitor.log_window(tasks, (window / n_window).tolist(), state.iteration, bar)
                window.zero_()
                n_window = 0
            if should_stop(stop, dist, at_log):
                interrupted = True
                break
    check_finite(first_bad, tasks)
    if interrupted:
        state.epoch_loss_sum, state.epoch_weight_sum = loss_sum.tolist(), weight_sum.tolist()
        return EpochResult({}, {}, interrupted=True)
    steps = max(state.batch_in_epoch, 1)
    if dist.distributed:  # every rank gets the global means (DWA must see the same numbers everywhere)
        all_reduce_sum(loss_sum).div_(dist.world_size)
    state.epoch_loss_sum, state.epoch_weight_sum = [], []
    weights = dict(zip(tasks, (weight_sum / steps).tolist())) if step.reports_weights else {}
    return EpochResult(dict(zip(tasks, (loss_sum / steps).tolist())), weights, step.epoch_stats())


@dataclass
class Run:
    """Everything a run is built from (set up once by ``setup``)."""

    settings: Settings
    family: Any
    dist: DistInfo
    model: nn.Module  # unwrapped: checkpoints, evaluation
    step: TrainStep
    loaders: Loaders
    state: TrainState
    logger: RunLogger
    monitor: Monitor
    data: dict[str, Any]
    replaced: list[Path]

    @property
    def best_path(self) -> Path:
        return best_path(self.settings.out)

    def save(self, path: str | Path | None = None, best: bool = False) -> None:
        """The resumable checkpoint (``--out``), or the best-by-validation file beside it."""
        if not self.dist.is_main:
            return
        step, model = self.step, self.model
        last = resumable_state(
            model=model.state_dict(),
            model_config=model.config.to_dict(),
            kind=model.config.kind,
            data=self.data,
            args={k: str(v) if isinstance(v, os.PathLike) else v for k, v in vars(self.settings).items()},
            optimizer=step.optimizer.state_dict(),
            scheduler=step.scheduler.state_dict(),
            scaler=step.scaler.state_dict() if step.scaler is not None else None,
            weighting=step.weighting.state_dict(),
            train_state=self.state.state_dict(),
            rng=capture_rng(),
        )
        save_checkpoint(best_state(last) if best else last, self.best_path if best else self.settings.out)


def best_path(out: str | Path) -> Path:
    out = Path(out)
    stem = out.stem[: -len("_last")] if out.stem.endswith("_last") else out.stem
    return out.with_name(f"{stem}_best{out.suffix or '.pth'}")


def setup(settings: Settings, family: Any, resume: dict[str, Any] | None) -> Run:
    """Devices, the run's folders (never over another run), data, network, optimiser, schedule."""
    if settings.get("freeze_bn") and settings.get("precise_bn"):
        raise UserError("--freeze-bn keeps BatchNorm's statistics, --precise-bn re-estimates them: choose one")
    dist = init_distributed(settings.device)
    check_amp(settings.amp, dist.device)
    replaced = check_run_folders(settings, best_path(settings.out), resume)
    seed_everything(settings.seed)
    if dist.device.type == "cpu":
        # The AFA softmax weights saturate and leave subnormal floats, which x86 handles slowly
        # (about +8 % per step); flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
    data = family.datasets()
    # a resumed run: its own network, the weights come from the checkpoint (restore)
    model = (
        build_network(settings, family.model_config(data.train), dist.is_main)
        if resume is None
        else model_from_config(resume["model_config"])
    )
    model.to(dist.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    model.monitor_fusions()
    weighting = make_weighting(model, settings).to(dist.device)
    optimizer = build_optimizer(model, weighting, settings, dist.device)
    loaders = Loaders(data, settings, family.val_batch_size(), dist)
    total = schedule_length(settings, loaders.iters_per_epoch, resume)  # --epochs extends it on resume
    scheduler = build_scheduler(optimizer, Schedule.of(settings, loaders.iters_per_epoch, total))
    shared = model.shared_parameters() if settings.get("weighting") == "gradnorm" else []
    step = make_step(
        wrap(model, settings, dist),
        family,
        optimizer,
        weighting,
        scheduler=scheduler,
        scaler=grad_scaler(settings.amp, dist.device),
        amp=settings.amp,
        device=dist.device,
        dist=dist,
        shared=shared,
        freeze_bn=bool(settings.get("freeze_bn")),
    )
    logger = RunLogger(settings.logdir, dist.is_main)
    return Run(
        settings,
        family,
        dist,
        model,
        step,
        loaders,
        TrainState(schedule_total=total),
        logger,
        Monitor(logger, settings, dist, optimizer),
        family.data_info(data.train),
        replaced,
    )


def restore(run: Run, resume: dict[str, Any]) -> None:
    """Put a resumed run's state back: weights, optimiser, schedule, scaler, weighting, position, RNGs."""
    step = run.step
    run.model.load_state_dict(resume["model"])
    step.optimizer.load_state_dict(resume["optimizer"])
    step.scheduler.load_state_dict(resume["scheduler"])
    if step.scaler is not None and resume.get("scaler"):
        step.scaler.load_state_dict(resume["scaler"])
    step.weighting.load_state_dict(resume["weighting"])
    total = run.state.schedule_total  # --epochs may have extended the run (engine/runs.py)
    run.state.load_state_dict(resume["train_state"])
    run.state.schedule_total = total
    restore_rng(resume["rng"])
    if run.dist.is_main:
        log.info(f"resumed {run.settings.resume}: epoch {run.state.epoch}, iteration {run.state.iteration}")


def validate(run: Run, panels: list[np.ndarray] | None) -> dict[str, float]:
    """Precise BN (if asked), then the family's metrics on the validation split, on the unwrapped model."""
    s, model = run.settings, run.model
    if s.precise_bn:
        recompute_bn_stats(
            model,
            run.loaders.bn_batches(run.state.epoch, s.precise_bn),
            run.dist.device,
            s.amp,
            s.channels_last,
            run.dist,
            run.family.inputs,
        )
    model.eval()
    return run.family.evaluate(
        model_fn(model, run.dist.device, s.amp, s.channels_last),
        run.loaders.val,
        run.dist.device,
        s.limit_batches,
        panels,
    )


def end_epoch(
    run: Run,
    result: EpochResult,
    metrics: dict[str, float],
    panels: list[np.ndarray],
    fusion: dict[str, float],
    seconds: float,
) -> None:
    """The epoch's score and best model, its scalars and log line, its checkpoints, its console summary."""
    state, logger = run.state, run.logger
    score = run.family.score(metrics)
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    # A NaN score (e.g. no valid pixel in a tiny validation set) never blocks the first best.
    improved = score > state.best or not math.isfinite(state.best)
    if improved:
        state.best, state.best_metrics = score, metrics
    train = {
        **{f"loss/{t}": v for t, v in result.losses.items()},
        **{f"weight/{t}": v for t, v in result.weights.items()},
    }
    heads = (("train/", train), ("grad/", result.grads), ("fusion/", fusion), ("val/", {**metrics, "score": score}))
    for head, values in heads:
        logger.scalars(values, state.epoch, head=head)
    for i, img in enumerate(panels):
        logger.image(f"val/example_{i}", img, state.epoch)
    logger.epoch_line(
        {
            "epoch": state.epoch,
            "iteration": state.iteration,
            "time_s": seconds,
            **{f"train/{k}": v for k, v in train.items()},
            **{f"grad/{k}": v for k, v in result.grads.items()},
            **{f"fusion/{k}": v for k, v in fusion.items()},
            **{f"val/{k}": v for k, v in metrics.items()},
            "val/score": score,
        }
    )
    logger.flush()
    run.save()
    if improved:
        run.save(best=True)
    if run.dist.is_main:
        losses = "  ".join(f"{t} {v:.4f}" for t, v in result.losses.items())
        weights = "  ".join(f"{t} {v:.3f}" for t, v in result.weights.items())
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info(
            f"epoch {state.epoch}/{run.settings.epochs} ({seconds:.0f} s)\n  train loss  {losses}   (weights "
            f"{weights})\n  val         {shown}\n  score {score:.4f}{'  (best so far)' if improved else ''}"
        )
    barrier()


def train(settings: Settings, family: Any, resume: dict[str, Any] | None) -> int:
    """Train a run to ``settings.epochs``; returns the process exit code."""
    # -- set up
    if resume is not None and "train_state" not in resume:
        raise UserError(
            f"--resume {settings.resume}: written by an older version of this project (no train_state); start a new run"
        )
    run = setup(settings, family, resume)
    # -- resume
    if resume is not None:
        restore(run, resume)
    start_run_folder(settings, run.replaced, run.dist.is_main)  # --overwrite removes the old run's files
    # -- the epoch loop
    with StopFlag() as stop, run.logger:
        while run.state.epoch < settings.epochs:
            t0 = time.time()
            batches = run.loaders.epoch(run.state.epoch, run.state.batch_in_epoch)
            result = train_one_epoch(run.step, batches, run.state, run.monitor, stop)
            if result.interrupted:
                run.save()
                return 128 + (stop.signum or signal.SIGTERM)
            run.step.weighting.end_epoch(result.losses)  # DWA: the next epoch's weights, saved with the state
            fusion = run.model.fusion_stats()
            panels: list[np.ndarray] = []
            metrics = validate(run, panels if run.dist.is_main else None)
            end_epoch(run, result, metrics, panels, fusion, time.time() - t0)
    # -- finish
    if run.dist.is_main:
        log.info(f"done: {settings.out} (latest), {run.best_path} (best, score {run.state.best:.4f})")
    return 0


def main(args: argparse.Namespace, family_cls: Any, explicit: set[str] | None = None) -> int:
    """A training script's main: resolve the settings, train, and turn failures into one line and an
    exit code (engine/errors.py). ``explicit``: the dests typed on the command line
    (``runs.parse_with_explicit``); None: the values that differ from the parser's defaults."""
    setup_console(is_main=int(os.environ.get("RANK", "0")) == 0)  # torchrun's rank, before any output
    if explicit is None:
        explicit = explicit_by_default(args, family_cls.get_args_parser())
    try:
        settings, resume = resolve(args, family_cls, explicit)
        return train(settings, family_cls(settings), resume)
    except HANDLED as e:
        code, message = exit_code(e)
        print(message, file=sys.stderr)
        return code
    finally:
        cleanup()
