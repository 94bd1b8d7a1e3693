"""The two task families: NYUv2 pixel tasks (seg + depth) and Adience image tasks (gender + age).

Each gives the training loop its datasets, losses, evaluation and pictures; the prediction
generators are shared with eval.py so that saved predictions are exactly what the metrics saw.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset

from data import (
    Adience,
    ImageEvalTransform,
    ImageTrainTransform,
    NYUv2,
    PixelEvalTransform,
    PixelTrainTransform,
    adience_protocol,
    sliding_window_predict,
    split_train_val,
)

from .losses import image_losses, pixel_losses
from .metrics import ImageMeter, PixelMeter
from .trainer import TaskFamily, evaluation_batches
from .viz import pixel_panel

ModelFn = Callable[[Tensor], dict[str, Tensor]]

# Validation subsets are carved with a fixed seed, independent of --seed, so that runs with
# different seeds select their best epoch on the same images.
VAL_SEED = 0


# -- pixel tasks (NYUv2) ---------------------------------------------------------------------

def pixel_datasets(args: argparse.Namespace):
    train = NYUv2(args.data_root, "train_noval", val_fraction=args.val_fraction, val_seed=VAL_SEED)
    val = NYUv2(args.data_root, "val", val_fraction=args.val_fraction, val_seed=VAL_SEED)
    return train, val, PixelTrainTransform(args.crop_size), PixelEvalTransform(args.crop_size)


@torch.no_grad()
def predict_pixel(model_fn: ModelFn, loader: Iterable, crop_size: int, device: torch.device,
                  limit: int | None = None) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
    """Full-resolution predictions (sliding windows, see data.transforms):
    yields (batch, seg (B, H, W) class ids, depth (B, H, W) metres).

    The windows go through the network one image at a time: CPU convolutions (oneDNN) pick their
    kernels by batch size, so a frame's numbers would otherwise depend in the last bits on the frames
    it was batched with; this way eval.py (any --batch-size) and predict.py on the same picture agree
    exactly.
    """
    for batch in evaluation_batches(loader, limit):
        image = batch["image"].to(device, non_blocking=True)
        parts = [sliding_window_predict(model_fn, image[i : i + 1], crop_size) for i in range(image.shape[0])]
        out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        yield batch, out["seg"].argmax(1), out["depth"][:, 0]


def pixel_evaluate(model_fn: ModelFn, loader: Iterable, device: torch.device, limit: int | None,
                   num_classes: int, crop_size: int, panels: list[np.ndarray] | None = None,
                   max_panels: int = 2,
                   on_sample: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                   meter: PixelMeter | None = None) -> dict[str, float]:
    """Pooled metrics; if ``panels`` is a list, the first samples' pictures (input | seg truth |
    seg prediction | depth truth | depth prediction, half size) are appended to it on the way;
    ``on_sample(index, seg, depth)`` receives each sample's predictions exactly as the metrics saw them;
    ``meter``: an empty PixelMeter to accumulate into (the caller reads more from it, e.g. per-class IoU)."""
    meter = meter if meter is not None else PixelMeter(num_classes, device)
    for batch, seg, depth in predict_pixel(model_fn, loader, crop_size, device, limit):
        meter.update(seg, batch["seg"].to(device), depth, batch["depth"][:, 0].to(device))
        if on_sample is None and (panels is None or len(panels) >= max_panels):
            continue
        seg_np, depth_np = seg.cpu().numpy().astype(np.int64), depth.cpu().numpy().astype(np.float32)
        for i, index in enumerate(batch["index"].tolist()):
            if on_sample is not None:
                on_sample(index, seg_np[i], depth_np[i])
            if panels is not None and len(panels) < max_panels:
                panels.append(pixel_panel(batch["image"][i], batch["seg"][i].numpy(), seg_np[i],
                                          batch["depth"][i, 0].numpy(), depth_np[i])[::2, ::2])
    meter.reduce()
    return meter.compute()


class PixelFamily(TaskFamily):
    """NYUv2: segmentation (the dataset's classes) and depth, DeepLabv3+ networks."""

    kind = "pixel"

    def datasets(self):
        train, val, tf, ef = pixel_datasets(self.args)
        self.num_classes = train.num_classes
        return train, val, tf, ef

    def tasks(self, train) -> dict[str, int]:
        return {"seg": train.num_classes, "depth": 1}

    def losses(self, out, batch):
        return pixel_losses(out, batch, self.args.depth_loss)

    def evaluate(self, model_fn, loader, device, limit, panels=None):
        return pixel_evaluate(model_fn, loader, device, limit, self.num_classes, self.args.crop_size, panels)


# -- image tasks (Adience) -------------------------------------------------------------------

def image_datasets(args: argparse.Namespace):
    train_folds, _ = adience_protocol(args.test_fold)
    full = Adience(args.data_root, train_folds, image_dir=args.image_dir)
    train_idx, val_idx = split_train_val(full, args.val_fraction, VAL_SEED)
    resize = round(args.crop_size * 256 / 224)  # the 256 -> 224 ratio of the usual protocol
    return (Subset(full, train_idx), Subset(full, val_idx), ImageTrainTransform(resize, args.crop_size),
            ImageEvalTransform(resize, args.crop_size))


@torch.no_grad()
def predict_image(model_fn: ModelFn, loader: Iterable, device: torch.device,
                  limit: int | None = None) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
    """Yields (batch, gender (B,), age (B,)) predicted class ids."""
    for batch in evaluation_batches(loader, limit):
        out = model_fn(batch["image"].to(device, non_blocking=True))
        yield batch, out["gender"].argmax(1), out["age"].argmax(1)


def image_evaluate(model_fn: ModelFn, loader: Iterable, device: torch.device, limit: int | None,
                   panels: list[np.ndarray] | None = None) -> dict[str, float]:
    """Pooled metrics (image tasks draw no panels)."""
    meter = ImageMeter(device=device)
    for batch, gender, age in predict_image(model_fn, loader, device, limit):
        meter.update(gender, torch.as_tensor(batch["gender"], device=device), age,
                     torch.as_tensor(batch["age"], device=device))
    meter.reduce()
    return meter.compute()


class ImageFamily(TaskFamily):
    """Adience: gender (2) and age group (8), ResNet-50 networks, one test fold per run."""

    kind = "image"

    def datasets(self):
        return image_datasets(self.args)

    def tasks(self, train) -> dict[str, int]:
        return {"gender": 2, "age": 8}

    def losses(self, out, batch):
        return image_losses(out, batch)

    def evaluate(self, model_fn, loader, device, limit, panels=None):
        return image_evaluate(model_fn, loader, device, limit, panels)
