"""The image family: Adience gender (2) + age group (8) with ResNet-50 branches, 5-fold protocol (train_image.py).

A run holds one fold out for testing and trains on the four others, a subject-exclusive share of which
is held out for validation. The prediction generator serves validation and eval.py alike, so saved
predictions are exactly what the metrics saw.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from data import (
    AGE_GROUPS,
    GENDERS,
    Adience,
    ImageEvalTransform,
    ImageTrainTransform,
    adience_protocol,
    split_train_val,
)
from data.synthetic import write_adience
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.inference import ModelFn, batches
from engine.losses import image_losses
from engine.metrics import ImageMeter
from engine.plots import plot_confusion
from engine.settings import Settings

from .base import Datasets, Protocol, write_csv
from .fused import FusedFamily

VAL_SEED = 0  # validation subjects are carved with a fixed seed, independent of --seed (same images per seed)
TASKS = {"gender": len(GENDERS), "age": len(AGE_GROUPS)}


def resize_for(crop_size: int) -> int:
    """Shorter side before the centre / random crop: the 256 -> 224 ratio of the usual protocol."""
    return round(crop_size * 256 / 224)


@torch.no_grad()
def predict_faces(
    model_fn: ModelFn, loader: Iterable, device: torch.device, limit: int | None = None
) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
    """Yields (batch, gender (B,), age (B,)) predicted class ids."""
    for batch in batches(loader, limit):
        out = model_fn(batch["image"].to(device, non_blocking=True))
        yield batch, out["gender"].argmax(1), out["age"].argmax(1)


class ImageFamily(FusedFamily):
    """Adience: gender (2) and age group (8), ResNet-50 networks, one test fold per run."""

    kind = "image"
    description = "Train AFA image networks on Adience: gender (2) + age group (8), ResNet-50 branches, 5 folds"
    script = "train_image.py"
    # The original image recipe: lr 0.001, weight decay 5e-4, batch 32, 50 epochs, x0.1 steps (here a poly
    # schedule by default; --schedule step --step-every N reproduces the steps).
    defaults: ClassVar[dict[str, Any]] = dict(
        crop_size=224, epochs=50, batch_size=32, lr=0.001, weight_decay=5e-4, schedule="poly"
    )
    eval_options = ("test_fold", "image_dir")
    protocols = (
        Protocol(
            "adience",
            "train_image.py",
            ("none", "shared", "cross_stitch", "nddr", "afa"),
            seeds=(0,),
            folds=(0, 1, 2, 3, 4),
        ),
    )
    hub_entry = "afanet_image"
    hub_doc = "Adience network (ResNet-50 branches): gender + age group of an aligned face, in eval mode."

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--test-fold",
            type=int,
            default=0,
            choices=range(5),
            metavar="{0..4}",
            help="Adience fold held out for testing; training uses the other four",
        )
        group.add_argument("--image-dir", default="aligned", help="image folder under --data-root (aligned or faces)")

    @classmethod
    def run_name(cls, settings: Settings) -> str:
        return f"{super().run_name(settings)}_fold{settings.test_fold}"

    # -- training ------------------------------------------------------------------------------

    def datasets(self) -> Datasets:
        s = self.settings
        train_folds, _ = adience_protocol(s.test_fold)
        full = Adience(s.data_root, train_folds, image_dir=s.image_dir)
        train_idx, val_idx = split_train_val(full, s.val_fraction, VAL_SEED)
        resize = resize_for(s.crop_size)
        return Datasets(
            Subset(full, train_idx),
            Subset(full, val_idx),
            ImageTrainTransform(resize, s.crop_size),
            ImageEvalTransform(resize, s.crop_size),
        )

    def tasks(self, train: Dataset) -> dict[str, int]:
        return dict(TASKS)

    def data_info(self, train: Dataset) -> dict[str, Any]:
        return {
            "dataset": "adience",
            "image_dir": self.settings.image_dir,
            "labels": {"gender": list(GENDERS), "age": list(AGE_GROUPS)},
        }

    def losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return image_losses(out, batch)

    def evaluate(self, model_fn, loader, device, limit=None, panels=None) -> dict[str, float]:
        """Pooled metrics (image tasks draw no panels)."""
        meter = ImageMeter(device=device)
        for batch, gender, age in predict_faces(model_fn, loader, device, limit):
            meter.update(
                gender,
                torch.as_tensor(batch["gender"], device=device),
                age,
                torch.as_tensor(batch["age"], device=device),
            )
        meter.reduce()
        return meter.compute()

    @classmethod
    def score(cls, metrics: Mapping[str, float]) -> float:
        """One number per task in [0, 1]: the mean of gender and age accuracy."""
        return (metrics["gender/acc"] + metrics["age/acc"]) / 2

    # -- eval.py -------------------------------------------------------------------------------

    def test(
        self, model_fn: ModelFn, model_config: Mapping[str, Any], args: argparse.Namespace, device: torch.device
    ) -> dict[str, float]:
        """The run's test fold (``--test-fold`` overrides it); ``--save-predictions``: predictions.csv;
        ``--plot``: the age confusion matrix."""
        size, fold = model_config["input_size"], self.settings.test_fold
        dataset = Adience(
            self.settings.data_root,
            [fold],
            transform=ImageEvalTransform(resize_for(size), size),
            image_dir=self.settings.image_dir,
        )
        loader = DataLoader(dataset, batch_size=args.batch_size or self.eval_batch_size, num_workers=args.workers)
        meter = ImageMeter(device=device)
        rows = []
        for batch, gender, age in predict_faces(model_fn, loader, device, args.limit_batches):
            g_true, a_true = batch["gender"].to(device), batch["age"].to(device)
            meter.update(gender, g_true, age, a_true)
            rows += zip(batch["path"], g_true.tolist(), gender.tolist(), a_true.tolist(), age.tolist())
        if args.save_predictions:
            write_csv(
                Path(args.save_predictions) / "predictions.csv",
                ["path", "gender_true", "gender_pred", "age_true", "age_pred"],
                rows,
            )
        if args.plot:
            cm = meter.age_confusion.cpu().numpy()
            print(f"wrote {plot_confusion(cm, list(AGE_GROUPS), Path(args.plot) / 'age_confusion.png')}")
        print(f"Adience test fold {fold}: {len(rows)} images")
        return meter.compute()

    # -- predict.py and released weights ----------------------------------------------------------

    @classmethod
    def preprocessing(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        size = int(model_config["input_size"])
        return {
            "input_size": size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "scale": "RGB uint8 / 255, then (x - mean) / std",
            "resize_shorter_side": resize_for(size),
            "center_crop": size,
        }

    @classmethod
    def labels(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, list[str]]:
        known = {"gender": GENDERS, "age": AGE_GROUPS}
        return {
            t: list(known[t]) if t in known and len(known[t]) == n else [f"class_{k}" for k in range(n)]
            for t, n in model_config["tasks"].items()
        }

    @classmethod
    def predict(
        cls,
        model_fn: ModelFn,
        info: Mapping[str, Any],
        reader: Iterable,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        """OUT/predictions.csv: path, gender_pred, gender_prob, age_pred (the Adience group, e.g. "(25, 32)"),
        age_prob. The networks learnt from Adience's aligned faces."""
        pre, labels = info["preprocessing"], info["labels"]
        transform = ImageEvalTransform(pre["resize_shorter_side"], pre["center_crop"])
        print(
            "note: image networks expect aligned faces like Adience's aligned/ images (centred, upright, the face "
            "filling the picture); other pictures give meaningless answers",
            file=sys.stderr,
        )

        def flush(paths: list[Path], images: list[Tensor]) -> list[list[Any]]:
            with torch.no_grad():
                out = model_fn(torch.stack(images).to(device))
            rows = [[str(p)] for p in paths]
            for task in TASKS:
                prob, pred = out[task].float().softmax(1).max(1)
                for row, k, q in zip(rows, pred.tolist(), prob.tolist()):
                    row += [labels[task][k], f"{q:.4f}"]
            return rows

        rows: list[list[Any]] = []
        paths: list[Path] = []
        images: list[Tensor] = []
        for path, image in reader:
            paths.append(path)
            images.append(transform({"image": image})["image"])
            if len(images) == args.batch_size:
                rows += flush(paths, images)
                paths, images = [], []
        if images:
            rows += flush(paths, images)
        if rows:  # nothing readable: predict.py reports it, no empty table is left behind
            write_csv(
                Path(args.out) / "predictions.csv", ["path", "gender_pred", "gender_prob", "age_pred", "age_prob"], rows
            )

    # -- bench.py and the demo -----------------------------------------------------------------

    @classmethod
    def random_batch(cls, model_config: Mapping[str, Any], batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        size = model_config["input_size"]
        out = {"image": torch.randn(batch, 3, size, size, generator=generator)}
        out.update({t: torch.randint(0, n, (batch,), generator=generator) for t, n in model_config["tasks"].items()})
        return out

    @classmethod
    def write_synthetic(cls, folder: Path) -> Path:
        """Five folds of 60 rows with aligned 256 px faces."""
        return write_adience(folder, per_fold=60)

    @classmethod
    def baseline(cls, data_root: str, test_fold: int = 0, **settings: Any) -> dict[str, float]:
        """The majority training class of each task, on the test fold."""
        train_folds, _ = adience_protocol(test_fold)
        train, test = Adience(data_root, train_folds), Adience(data_root, [test_fold])
        g = int(np.bincount(train.targets["gender"]).argmax())
        a = int(np.bincount(train.targets["age"]).argmax())
        meter = ImageMeter()
        gt_g, gt_a = torch.tensor(test.targets["gender"]), torch.tensor(test.targets["age"])
        meter.update(torch.full_like(gt_g, g), gt_g, torch.full_like(gt_a, a), gt_a)
        return meter.compute()
