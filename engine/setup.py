"""What a training run is built from: the network and its starting weights, the loss weighting, the
optimiser, the loaders with their deterministic samplers, and precise BatchNorm."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from models import init_from_stage1, model_from_config

from .checkpoint import load_checkpoint
from .distributed import DistInfo, all_reduce_sum
from .errors import UserError
from .gradients import GRADIENT_METHODS, MissingSolver
from .inference import batches
from .precision import autocast
from .sampler import EpochSampler, SeededDataset
from .settings import Settings
from .weighting import METHOD_FLAGS, GradientMethod, LossWeighting, build_weighting

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the network ---------------------------------------------------------------------------------


def load_stage1(path: str, config: Any) -> dict[str, Tensor]:
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


def build_network(settings: Settings, config: dict[str, Any], is_main: bool) -> nn.Module:
    """A new network from its config, with its starting weights: a stage-1 checkpoint (--init, stage 2)
    or ImageNet backbones (--pretrained)."""
    try:
        model = model_from_config(config)
    except ValueError as e:
        raise UserError(str(e)) from None
    init = settings.get("init")
    if init:
        if model.config.fusion == "shared":
            raise UserError(
                f"--init {init}: hard sharing ('shared') starts from ImageNet weights "
                "(--pretrained), not from a single-task checkpoint"
            )
        report = init_from_stage1(model, load_stage1(init, model.config), heads=settings.init_heads)
        if is_main:
            what = "trunks and heads" if settings.init_heads else "trunks"
            log.info(
                f"init from {init}: {len(report['loaded'])} tensors loaded ({what}); "
                f"{len(report['kept'])} kept as initialised"
            )
    elif settings.pretrained and settings.pretrained != "none":
        try:
            unused = model.load_backbone_weights(settings.pretrained)
        except ValueError as e:
            raise UserError(f"--pretrained {settings.pretrained}: {e}") from None
        except OSError as e:  # urllib's URLError is an OSError: no network, proxy, full disk ...
            if settings.pretrained != "imagenet":
                raise
            raise UserError(
                f"--pretrained imagenet: could not get torchvision's ResNet-50 weights ({e}); "
                "use --pretrained PATH (a saved state dict) or --pretrained none"
            ) from None
        if is_main:
            log.info(f"backbones from {settings.pretrained}; unused keys: {', '.join(unused) or 'none'}")
    return model


def wrap(model: nn.Module, settings: Settings, dist: DistInfo) -> nn.Module:
    """The network the steps train: DDP-wrapped (with SyncBatchNorm if asked) when distributed."""
    if not dist.distributed:
        return model
    net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if settings.sync_bn else model
    device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=device_ids)


# -- loss weighting and optimiser ------------------------------------------------------------------


def default_weighting(model: nn.Module) -> str:
    """The original recipe: DWA (T = 2) when the tasks interact; a plain sum for the single-task pair
    (and for a family with one task)."""
    return "equal" if len(model.tasks) < 2 or model.config.fusion == "none" else "dwa"


def make_weighting(model: nn.Module, settings: Settings) -> LossWeighting:
    name = settings.get("weighting") or default_weighting(model)
    if name in GRADIENT_METHODS:
        return make_gradient_method(model, settings, name)
    if name == "gradnorm" and not model.shared_parameters():
        raise UserError(
            f"--weighting gradnorm balances gradients on parameters both tasks share; "
            f"--fusion {model.config.fusion} has none"
        )
    options = {k: settings.get(k) for k in ("dwa_temp", "gradnorm_alpha") if settings.get(k) is not None}
    try:
        return build_weighting(name, model.tasks, **options)
    except ValueError as e:
        raise UserError(str(e)) from None


def make_gradient_method(model: nn.Module, settings: Settings, name: str) -> GradientMethod:
    """A gradient method with its flags' options, after refusing what makes no sense with it."""
    if not model.shared_parameters():
        raise UserError(
            f"--weighting {name}: a gradient method combines the tasks' gradients on the parameters they share; "
            f"--fusion {model.config.fusion} shares none (use shared, cross_stitch, nddr or afa)"
        )
    if getattr(model.config, "grad_mode", None) == "adaptive" and name != "famo":
        raise UserError(
            f"--weighting {name} with --grad-mode adaptive: adaptive picks each branch's gradient from the sum of the "
            "tasks' gradients at the fusion, which per-task gradients never form; use --grad-mode protect or joint"
        )
    options = {option: settings.get(flag) for option, flag in METHOD_FLAGS.get(name, {}).items()}
    try:
        return GradientMethod(model.tasks, name, **options)
    except (ValueError, MissingSolver) as e:
        raise UserError(f"--weighting {name}: {e}") from None


def build_optimizer(
    model: nn.Module, weighting: LossWeighting, settings: Settings, device: torch.device
) -> torch.optim.Optimizer:
    """SGD over the model's groups (backbone, fusion, head ...) and, when the weighting learns
    parameters (uncertainty, GradNorm), a 'weighting' group at the base rate without weight decay
    (decay would pull log variances and weights towards 0)."""
    try:
        groups = model.param_groups(settings.lr, settings.lr_mult, settings.weight_decay)
    except ValueError as e:
        raise UserError(f"--lr-mult {json.dumps(settings.lr_mult)}: {e}") from None
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"name": "weighting", "params": learned, "lr": settings.lr, "lr_mult": 1.0, "weight_decay": 0.0})
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, **kw)


# -- data ----------------------------------------------------------------------------------------


def make_loader(
    dataset: Dataset, batch: int, workers: int, sampler: EpochSampler, device: torch.device, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        # The loader draws worker base seeds from its own generator, so the global RNG (dropout)
        # is untouched by iterator creation; samples are seeded by SeededDataset anyway.
        generator=torch.Generator().manual_seed(0),
    )


class Loaders:
    """The training, validation and precise-BN loaders of a run, with samplers that make every epoch's
    order and every sample's augmentation a function of (seed, epoch, index): resume is exact.

    Args:
        datasets: the family's Datasets (raw samples and transforms).
        settings: seed, batch size, workers, limit_batches.
        val_batch: validation batch size (the family's).
        dist: this process's rank and device.
    """

    def __init__(self, datasets: Any, settings: Settings, val_batch: int, dist: DistInfo) -> None:
        seed, workers, device = settings.seed, settings.workers, dist.device
        train = SeededDataset(datasets.train, datasets.train_transform, seed)
        val = SeededDataset(datasets.val, datasets.eval_transform, seed)
        self.train_sampler = EpochSampler(len(train), seed, True, dist.rank, dist.world_size)
        per_rank = len(self.train_sampler)
        if per_rank < 2:  # BatchNorm cannot train on single samples (ASPP's pooled branch is 1x1)
            raise UserError(
                f"{settings.data_root}: {len(train)} training samples ({per_rank} per process); need at least 2"
            )
        # A training set smaller than a batch trains on batches of all of it (the setting stays as given).
        self.batch_size = min(settings.batch_size, per_rank)
        if self.batch_size < settings.batch_size and dist.is_main:
            log.info(
                f"note: {per_rank} training samples per process, fewer than --batch-size {settings.batch_size}: "
                f"using batches of {per_rank}"
            )
        # drop_last: a last batch of one sample would break BatchNorm in training mode.
        self.train = make_loader(train, self.batch_size, workers, self.train_sampler, device, drop_last=True)
        val_sampler = EpochSampler(len(val), seed, False, dist.rank, dist.world_size, pad=False)
        self.val = make_loader(val, val_batch, workers, val_sampler, device, drop_last=False)
        # Precise BN reads training batches through its own sampler, so the training order is untouched.
        self.bn_sampler = EpochSampler(len(train), seed + 1, True, dist.rank, dist.world_size)
        self.bn = make_loader(train, self.batch_size, 0, self.bn_sampler, device, drop_last=True)
        self.limit = settings.limit_batches
        self.iters_per_epoch = len(self.train) if self.limit is None else min(len(self.train), self.limit)

    def epoch(self, epoch: int, done: int) -> EpochBatches:
        """The training batches of ``epoch`` after the ``done`` ones an interrupted run already trained on."""
        self.train_sampler.set_epoch(epoch, skip_samples=done * self.batch_size)
        return EpochBatches(self.train, max(self.iters_per_epoch - done, 0))

    def bn_batches(self, epoch: int, n: int) -> Iterator[Any]:
        self.bn_sampler.set_epoch(epoch)
        return batches(self.bn, n)


class EpochBatches:
    """The batches one epoch trains on: at most ``total`` of the loader's."""

    def __init__(self, loader: DataLoader, total: int) -> None:
        self.loader, self.total = loader, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Any]:
        return batches(self.loader, self.total)


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4:  # the images (and any other 4-D input)
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    batch_iter: Iterator[dict[str, Any]],
    device: torch.device,
    amp: str,
    channels_last: bool,
    dist: DistInfo,
    inputs: Callable[[dict[str, Any]], tuple[Tensor, ...]] = lambda b: (b["image"],),
) -> None:
    """Precise BN: replace the running statistics (an average over the last, still moving, weights)
    by plain averages over the given training batches with the current weights."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for batch in batch_iter:
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp):
            model(*inputs(batch))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
        if dist.distributed:  # every rank evaluates with the same statistics
            for t in (bn.running_mean, bn.running_var):
                all_reduce_sum(t).div_(dist.world_size)
