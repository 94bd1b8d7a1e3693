"""The pixel family: dense tasks with DeepLabv3+ branches (train_pixel.py) on NYUv2 (segmentation, depth,
surface normals) or Cityscapes (segmentation, disparity or depth).

``--tasks`` chooses the tasks and their branch order (task 1 first) from what the dataset has; the
tasks themselves are families/pixel_tasks.py. Evaluation is on full frames at label resolution: the
network, whose SAM fixes its input size, sees windows of that size (data.transforms.sliding_window_predict).
The same prediction generator serves validation, eval.py and predict.py, so saved predictions are
exactly what the metrics saw.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from data import (
    Cityscapes,
    DataError,
    NYUv2,
    PixelEvalTransform,
    PixelTrainTransform,
    normalize,
    sliding_window_predict,
)
from data.cityscapes_labels import CATEGORY_NAMES_7, CLASS_NAMES_19
from data.nyuv2_tables import CLASS_NAMES_13, CLASS_NAMES_40
from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import write_nyuv2
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, count_windows, hw, window_strides
from engine.inference import ModelFn, batches
from engine.losses import DEPTH_LOSSES, NORMAL_LOSSES, pixel_losses
from engine.plots import plot_grid
from engine.settings import Settings
from engine.viz import color_seg, denormalize

from .base import Datasets, Protocol
from .fused import FusedFamily
from .pixel_tasks import PIXEL_TASKS

# Validation subsets are carved with a fixed seed, independent of --seed, so that runs with different
# seeds select their best epoch on the same images.
VAL_SEED = 0
OVERLAY_ALPHA = 0.5  # weight of the segmentation colours over the photo in predict.py's overlay
CITYSCAPES_TARGETS = ("disparity", "depth")
# The class-name tables a checkpoint's class count points to when it records no names of its own.
CLASS_TABLES = (CLASS_NAMES_40, CLASS_NAMES_13, CLASS_NAMES_19, CATEGORY_NAMES_7)
# One number per task in [0, 1], higher is better: the model-selection score is their mean.
TASK_SCORES = {"seg": "seg/miou", "depth": "depth/delta1", "normal": "normal/a30"}


def _nyuv2(s: Settings, split: str, transform: Any = None) -> NYUv2:
    return NYUv2(
        s.data_root, split, transform, val_fraction=s.val_fraction, val_seed=VAL_SEED, seg_classes=s.seg_classes
    )


def _cityscapes(s: Settings, split: str, transform: Any = None) -> Cityscapes:
    return Cityscapes(
        s.data_root,
        split,
        transform,
        seg_classes=s.seg_classes or 19,
        target=s.cityscapes_target,
        val_fraction=s.val_fraction,
        val_seed=VAL_SEED,
    )


# --dataset -> its reader, from the run's settings
READERS = {"nyuv2": _nyuv2, "cityscapes": _cityscapes}


@torch.no_grad()
def predict_frames(
    model_fn: ModelFn,
    loader: Iterable,
    crop_size: int | list[int],
    tasks: list[str],
    device: torch.device,
    limit: int | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
    """Full-resolution predictions (sliding windows, see data.transforms): yields (batch, {task: prediction}),
    seg (B, H, W) class ids, depth (B, H, W), normal (B, 3, H, W) unit vectors.

    Each image's windows go through the network on their own (in batches of WINDOW_BATCH): CPU convolutions
    (oneDNN) pick their kernels by batch size, so a frame's numbers would otherwise depend in the last bits
    on the frames it was batched with; this way eval.py (any --batch-size) and predict.py on the same
    picture agree exactly.
    """
    for batch in batches(loader, limit):
        image = batch["image"].to(device, non_blocking=True)
        parts = [sliding_window_predict(model_fn, image[i : i + 1], crop_size) for i in range(image.shape[0])]
        yield batch, {t: PIXEL_TASKS[t].decode(torch.cat([p[t] for p in parts])) for t in tasks}


def evaluate_frames(
    model_fn: ModelFn,
    loader: Iterable,
    device: torch.device,
    limit: int | None,
    tasks: list[str],
    num_classes: int,
    crop_size: int | list[int],
    panels: list[np.ndarray] | None = None,
    max_panels: int = 2,
    on_sample=None,
    meters: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Pooled metrics of every task; if ``panels`` is a list, the first samples' pictures (input, then truth and
    prediction of every task, half size) are appended to it on the way; ``on_sample(index, {task: array})``
    receives each sample's predictions exactly as the metrics saw them; ``meters``: empty meters to
    accumulate into, {task: meter} (the caller reads more from them, e.g. per-class IoU)."""
    meters = meters if meters is not None else {t: PIXEL_TASKS[t].meter(num_classes, device) for t in tasks}
    for batch, preds in predict_frames(model_fn, loader, crop_size, tasks, device, limit):
        for t, pred in preds.items():
            meters[t].update(pred, PIXEL_TASKS[t].truth(batch).to(device))
        if on_sample is None and (panels is None or len(panels) >= max_panels):
            continue
        arrays = {t: sample_arrays(p) for t, p in preds.items()}
        for i, index in enumerate(batch["index"].tolist()):
            if on_sample is not None:
                on_sample(index, {t: a[i] for t, a in arrays.items()})
            if panels is not None and len(panels) < max_panels:
                panels.append(panel(batch, i, {t: a[i] for t, a in arrays.items()})[::2, ::2])
    metrics: dict[str, float] = {}
    for meter in meters.values():
        meter.reduce()
        metrics.update(meter.compute())
    return metrics


def sample_arrays(prediction: Tensor) -> np.ndarray:
    """A batch of predictions as saved: class ids int64, everything else float32."""
    array = prediction.cpu().numpy()
    return array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(np.float32)


def panel(batch: dict[str, Any], i: int, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """One row: input | truth and prediction of every task, (H, (1 + 2 T) W, 3)."""
    pictures = [denormalize(batch["image"][i])]
    for t, pred in predictions.items():
        truth = PIXEL_TASKS[t].truth(batch)[i].numpy()
        pictures += [PIXEL_TASKS[t].picture(truth, truth), PIXEL_TASKS[t].picture(pred, truth)]
    return np.concatenate(pictures, axis=1)


class PixelFamily(FusedFamily):
    """Dense tasks (segmentation, depth or disparity, surface normals) on NYUv2 or Cityscapes, DeepLabv3+."""

    kind = "pixel"
    description = (
        "Train AFA pixel networks: NYUv2 (segmentation, depth, normals) or Cityscapes (segmentation, "
        "disparity), DeepLabv3+ branches"
    )
    script = "train_pixel.py"
    # The reference recipe: SGD momentum 0.9, poly schedule; ASPP and decoders at 10x the backbone rate.
    defaults: ClassVar[dict[str, Any]] = dict(
        crop_size=300, epochs=60, batch_size=8, lr=0.007, weight_decay=1e-4, schedule="poly"
    )
    eval_options = ("per_class",)
    predict_options = ("overlay", "native_scale")
    protocols = (
        Protocol(
            "nyuv2",
            "train_pixel.py",
            ("none", "shared", "cross_stitch", "nddr", "afa"),
            seeds=(0, 1, 2),
            per_class=True,
            task_flag="--tasks",
        ),
        # the multi-task papers' setting: MTAN's 128 x 256 frames, 7 classes and disparity
        Protocol(
            "cityscapes",
            "train_pixel.py",
            ("none", "shared", "cross_stitch", "nddr", "afa"),
            seeds=(0, 1, 2),
            per_class=True,
            script_args=("--dataset", "cityscapes", "--seg-classes", "7", "--crop-size", "128", "256"),
        ),
    )
    hub_entry = "afanet_pixel"
    hub_doc = (
        "Pixel network (DeepLabv3+ branches): e.g. NYUv2 segmentation + depth in metres, or + surface "
        "normals, in eval mode."
    )
    eval_batch_size = 2  # full frames, each split into windows
    non_square_inputs = True

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--dataset",
            choices=tuple(READERS),
            default="nyuv2",
            help="nyuv2 (official prepared folder or MTAN folder) or cityscapes (official layout or "
            "MTAN folder) (docs/data.md)",
        )
        group.add_argument(
            "--tasks",
            nargs="+",
            choices=tuple(PIXEL_TASKS),
            default=None,
            metavar="TASK",
            help="the tasks in branch order, task 1 first, from what the dataset has (NYUv2: seg depth "
            "normal, normals in the MTAN folder only; Cityscapes: seg depth); default seg depth",
        )
        group.add_argument(
            "--seg-classes",
            type=int,
            choices=(40, 13, 19, 7),
            default=None,
            help="NYUv2: 40 or 13 (default: the folder's, 40 official, 13 MTAN); Cityscapes: 19 trainIds "
            "or 7 categories (default 19)",
        )
        group.add_argument(
            "--depth-loss",
            choices=DEPTH_LOSSES,
            default="berhu",
            help="depth (disparity) loss on valid pixels (ground truth > 0)",
        )
        group.add_argument(
            "--normal-loss",
            choices=NORMAL_LOSSES,
            default="cos",
            help="normal loss on valid pixels: cos = 1 - cosine (MTAN, LibMTL), l1 (Auto-Lambda)",
        )
        group.add_argument(
            "--cityscapes-target",
            choices=CITYSCAPES_TARGETS,
            default="disparity",
            help="Cityscapes' depth task: disparity (the multi-task papers') or metric depth from the "
            "camera files (official layout only)",
        )

    # -- the run's data and tasks ---------------------------------------------------------------

    def open(self, split: str, transform: Any = None) -> Dataset:
        """The run's dataset split (``--dataset`` and its options)."""
        return READERS[self.settings.dataset](self.settings, split, transform)

    @cached_property
    def test_set(self) -> Dataset:
        """The test split, untransformed (its meta data: classes, tasks)."""
        return self.open("test")

    @property
    def task_names(self) -> list[str]:
        """The run's tasks in branch order, checked against what the dataset has (DataError otherwise)."""
        names = list(self.settings.tasks or ("seg", "depth"))
        have = self.test_set.tasks
        missing = [t for t in names if t not in have]
        if missing or len(set(names)) != len(names):
            what = "surface normals (only NYUv2's MTAN folder has them)" if "normal" in missing else ", ".join(missing)
            raise DataError(
                f"--tasks {' '.join(names)}: {self.settings.data_root} ({self.settings.dataset}) has no "
                f"{what}; its tasks: {' '.join(have)}"
                if missing
                else f"--tasks {' '.join(names)}: a task named twice"
            )
        return names

    @property
    def num_classes(self) -> int:
        return self.test_set.num_classes

    # -- training ------------------------------------------------------------------------------

    def datasets(self) -> Datasets:
        self.task_names  # noqa: B018 (checks --tasks against the data before anything is built)
        crop = self.settings.crop_size
        disparity = getattr(self.test_set, "target", None) == "disparity"
        return Datasets(
            self.open("train_noval"),
            self.open("val"),
            PixelTrainTransform(crop, disparity=disparity),
            PixelEvalTransform(crop),
        )

    def tasks(self, train: Dataset) -> dict[str, int]:
        return {t: PIXEL_TASKS[t].channels(train) for t in self.task_names}

    def model_options(self) -> dict[str, Any]:
        return {"unit_tasks": [t for t in self.task_names if PIXEL_TASKS[t].unit]}

    def data_info(self, train: Dataset) -> dict[str, Any]:
        height, width = train[0]["image"].shape[-2:]
        target = getattr(train, "target", "depth")
        units = {
            "depth": "metres"
            if target == "depth"
            else f"disparity in pixels of an image {train.disparity_width} px wide",
            "normal": "unit vectors",
        }
        return {
            "dataset": self.settings.dataset,
            "layout": train.layout,
            "frame_size": [int(height), int(width)],
            "labels": {"seg": list(train.class_names)},
            "units": {t: units[t] for t in self.task_names if t in units},
        }

    def losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return pixel_losses(out, batch, self.settings.depth_loss, self.settings.normal_loss)

    def evaluate(self, model_fn, loader, device, limit=None, panels=None) -> dict[str, float]:
        return evaluate_frames(
            model_fn, loader, device, limit, self.task_names, self.num_classes, self.settings.crop_size, panels
        )

    @classmethod
    def score(cls, metrics: Mapping[str, float]) -> float:
        """One number per task in [0, 1] (seg mIoU, depth delta1, normal share within 30 degrees), their mean."""
        values = [metrics[k] for k in TASK_SCORES.values() if k in metrics]
        return sum(values) / len(values)

    def val_batch_size(self) -> int:
        return max(1, self.settings.batch_size // 2)  # full frames: each holds several windows

    # -- eval.py -------------------------------------------------------------------------------

    def test(
        self, model_fn: ModelFn, model_config: Mapping[str, Any], args: argparse.Namespace, device: torch.device
    ) -> dict[str, float]:
        """The test split at label resolution; ``--save-predictions``: <index>.npz with an array per task (seg,
        depth, normal (3, H, W)); ``--per-class``: {class name: IoU}; ``--plot``: a qualitative grid."""
        size, tasks = model_config["input_size"], list(model_config["tasks"])
        dataset = self.open("test", PixelEvalTransform(size))
        if "seg" in tasks and dataset.num_classes != model_config["tasks"]["seg"]:
            raise DataError(
                f"{self.settings.data_root}: {dataset.num_classes}-class labels, but the checkpoint "
                f"predicts {model_config['tasks']['seg']} classes"
            )
        missing = [t for t in tasks if t not in dataset.tasks]
        if missing:
            raise DataError(
                f"{self.settings.data_root}: no {', '.join(missing)} ground truth for the checkpoint's "
                f"tasks {' '.join(tasks)}"
            )
        loader = DataLoader(dataset, batch_size=args.batch_size or self.eval_batch_size, num_workers=args.workers)
        out_dir = Path(args.save_predictions) if args.save_predictions else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)

        def save(index: int, arrays: dict[str, np.ndarray]) -> None:
            np.savez(out_dir / f"{index}.npz", **arrays)

        panels: list[np.ndarray] = []
        meters = {t: PIXEL_TASKS[t].meter(dataset.num_classes, device) for t in tasks}
        metrics = evaluate_frames(
            model_fn,
            loader,
            device,
            args.limit_batches,
            tasks,
            dataset.num_classes,
            size,
            panels if args.plot else None,
            max_panels=4,
            on_sample=save if out_dir else None,
            meters=meters,
        )
        if args.per_class:
            if "seg" not in meters:
                raise DataError(f"--per-class: the checkpoint has no segmentation task ({' '.join(tasks)})")
            iou = {
                name: (None if math.isnan(v) else v) for name, v in zip(dataset.class_names, meters["seg"].class_iou())
            }
            Path(args.per_class).parent.mkdir(parents=True, exist_ok=True)
            Path(args.per_class).write_text(json.dumps(iou, indent=2))
            print(f"wrote {args.per_class}")
        if panels:
            titles = ("input", *(f"{t} {w}" for t in tasks for w in ("truth", "prediction")))
            print(f"wrote {plot_grid(panels, Path(args.plot) / 'qualitative.png', titles)}")
        return metrics

    # -- predict.py and released weights ----------------------------------------------------------

    @classmethod
    def preprocessing(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        size = model_config["input_size"]
        (h, w), (sh, sw) = hw(size), window_strides(size)
        pre: dict[str, Any] = {
            "input_size": size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "scale": "RGB uint8 / 255, then (x - mean) / std",
            "windows": f"the image is covered by {h} x {w} windows (strides {sh}, {sw}) and every "
            "output is averaged over the windows covering a pixel (data/transforms.py)",
        }
        if data.get("frame_size"):
            pre["frame_size"] = list(data["frame_size"])
            pre["resize"] = (
                f"shorter side to {min(data['frame_size'])} px (the training frames) before the "
                "windows, outputs brought back to the photo's size"
            )
        return pre

    @classmethod
    def labels(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, list[str]]:
        """The class names the checkpoint recorded; else a known table with the checkpoint's class count."""
        if "seg" not in model_config["tasks"]:
            return {}
        channels = model_config["tasks"]["seg"]
        recorded = (data.get("labels") or {}).get("seg")
        if recorded and len(recorded) == channels:
            return {"seg": list(recorded)}
        tables = [t for t in CLASS_TABLES if len(t) == channels]
        return {"seg": list(tables[0]) if tables else [f"class_{k}" for k in range(channels)]}

    @classmethod
    def predict(
        cls,
        model_fn: ModelFn,
        info: Mapping[str, Any],
        reader: Iterable,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        """Per image: OUT/<name>.npz with an array per task (seg (H, W) int64 class ids, depth (H, W) float32,
        normal (3, H, W) float32 unit vectors), <name>_<task>.png (seg: palette, pixel value = class id; depth:
        viridis; normal: RGB = (n + 1) / 2), with --overlay <name>_overlay.png; labels.json.

        Photos are brought to the training frames' scale (shorter side = theirs) unless --native-scale or
        the checkpoint does not record it; the outputs come back at the photo's size."""
        out, pre, config = Path(args.out), info["preprocessing"], info["model_config"]
        size, tasks = pre["input_size"], list(config["tasks"])
        frame = None if args.native_scale else pre.get("frame_size")
        if config["tasks"].get("seg", 0) > 256:
            print(
                "warning: more than 256 classes: <name>_seg.png holds ids modulo 256 (the .npz holds them all)",
                file=sys.stderr,
            )
        names = UniqueNames()
        single = len(getattr(reader, "files", ())) == 1  # a bar over the windows; several photos: predict.py's bar
        for path, image in reader:
            height, width = image.shape[-2:]
            work = image if frame is None else resize_shorter_side(image, min(frame))
            x = normalize(work)[None].to(device)  # (1, 3, h, w), as eval.py's DataLoader gives the transform's output
            with tqdm(
                total=count_windows(*work.shape[-2:], size),
                unit="window",
                leave=False,
                file=sys.stderr,
                desc=path.name,
                disable=not single,
            ) as bar:
                outputs = sliding_window_predict(model_fn, x, size, on_window=lambda: bar.update(1))
            arrays = {t: sample_arrays(PIXEL_TASKS[t].at_size(outputs[t][0], (height, width))[None])[0] for t in tasks}
            name = names(path)
            np.savez(out / f"{name}.npz", **arrays)
            for t, array in arrays.items():
                picture, text = PIXEL_TASKS[t].png(array)
                picture.save(out / f"{name}_{t}.png", pnginfo=text)
            if args.overlay and "seg" in arrays:
                photo = image.permute(1, 2, 0).numpy()
                blend = (1 - OVERLAY_ALPHA) * photo + (OVERLAY_ALPHA * 255) * color_seg(arrays["seg"])
                Image.fromarray(np.rint(blend).astype(np.uint8)).save(out / f"{name}_overlay.png")
        if names.used:
            units = dict((info.get("data") or {}).get("units") or {"depth": "metres"})
            labels = {**{t: units.get(t, "") for t in tasks}, **info["labels"]}
            (out / "labels.json").write_text(json.dumps(labels, indent=2))

    # -- bench.py and the demo -----------------------------------------------------------------

    @classmethod
    def random_batch(cls, model_config: Mapping[str, Any], batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Images (B, 3, h, w) and a valid random target of every task (some pixels without ground truth)."""
        h, w = hw(model_config["input_size"])
        out = {"image": torch.randn(batch, 3, h, w, generator=generator)}
        for t, channels in model_config["tasks"].items():
            out[PIXEL_TASKS[t].key] = PIXEL_TASKS[t].random_target(channels, (batch, h, w), generator)
        return out

    @classmethod
    def write_synthetic(cls, folder: Path) -> Path:
        """24 rendered rooms as the official .mat files (480 x 640), prepared."""
        raw = write_nyuv2(folder / "raw", n=24)
        return prepare_nyuv2(raw / "nyu_depth_v2_labeled.mat", raw / "splits.mat", folder / "nyuv2", progress=False)

    @classmethod
    def baseline(cls, data_root: str, **settings: Any) -> dict[str, float]:
        """On the test split: the majority training class everywhere, the mean valid training depth everywhere,
        the mean training normal direction everywhere (for the tasks the settings name; default seg depth)."""
        values = {**vars(cls.get_args_parser().parse_args([])), "data_root": data_root, **settings}
        fam = cls(Settings(**values))
        tasks, train, test = fam.task_names, fam.open("train"), fam.test_set
        constant = {t: PIXEL_TASKS[t].trivial(train) for t in tasks}
        meters = {t: PIXEL_TASKS[t].meter(test.num_classes, torch.device("cpu")) for t in tasks}
        for s in test:
            batch = {k: v[None] if isinstance(v, Tensor) else v for k, v in s.items()}
            for t in tasks:
                truth = PIXEL_TASKS[t].truth(batch)
                meters[t].update(PIXEL_TASKS[t].everywhere(constant[t], truth.shape[-2:]), truth)
        return {k: v for m in meters.values() for k, v in m.compute().items()}


# -- predict.py helpers --------------------------------------------------------------------------


class UniqueNames:
    """Output names from file stems; a repeated stem gets -1, -2, ... so that no output is overwritten."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        name, k = path.stem, 0
        while name in self.used:
            k += 1
            name = f"{path.stem}-{k}"
        self.used.add(name)
        return name


def resize_shorter_side(image: Tensor, side: int) -> Tensor:
    """uint8 (3, H, W) resized (bilinear, antialiased) so that its shorter side is ``side``; unchanged if it is."""
    height, width = image.shape[-2:]
    if min(height, width) == side:
        return image
    scale = side / min(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    return TF.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
