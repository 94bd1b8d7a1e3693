"""The pixel family: NYUv2 semantic segmentation + depth with DeepLabv3+ branches (train_pixel.py).

Evaluation is on full frames at label resolution: the network, whose SAM fixes its input size, sees
crop_size windows (data.transforms.sliding_window_predict). The same prediction generator serves
validation, eval.py and predict.py, so saved predictions are exactly what the metrics saw.
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
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from data import DataError, NYUv2, PixelEvalTransform, PixelTrainTransform, normalize, sliding_window_predict
from data.labels import IGNORE_INDEX
from data.nyuv2_tables import CLASS_NAMES_13, CLASS_NAMES_40
from data.prepare_nyuv2 import prepare_nyuv2
from data.synthetic import write_nyuv2
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, count_windows
from engine.inference import ModelFn, batches
from engine.losses import DEPTH_LOSSES, pixel_losses
from engine.metrics import PixelMeter
from engine.plots import plot_grid
from engine.viz import color_seg, depth_rgb8, pixel_panel

from .base import Datasets, Protocol
from .fused import FusedFamily

# Validation subsets are carved with a fixed seed, independent of --seed, so that runs with different
# seeds select their best epoch on the same images.
VAL_SEED = 0
OVERLAY_ALPHA = 0.5  # weight of the segmentation colours over the photo in predict.py's overlay
STRIP_ROWS = 64  # rows per strip when segmentation scores are brought back to a large photo's size


@torch.no_grad()
def predict_frames(model_fn: ModelFn, loader: Iterable, crop_size: int, device: torch.device,
                   limit: int | None = None) -> Iterator[tuple[dict[str, Any], Tensor, Tensor]]:
    """Full-resolution predictions (sliding windows, see data.transforms):
    yields (batch, seg (B, H, W) class ids, depth (B, H, W) metres).

    Each image's windows go through the network on their own (in batches of WINDOW_BATCH): CPU convolutions
    (oneDNN) pick their kernels by batch size, so a frame's numbers would otherwise depend in the last bits
    on the frames it was batched with; this way eval.py (any --batch-size) and predict.py on the same
    picture agree exactly.
    """
    for batch in batches(loader, limit):
        image = batch["image"].to(device, non_blocking=True)
        parts = [sliding_window_predict(model_fn, image[i : i + 1], crop_size) for i in range(image.shape[0])]
        out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        yield batch, out["seg"].argmax(1), out["depth"][:, 0]


def evaluate_frames(model_fn: ModelFn, loader: Iterable, device: torch.device, limit: int | None, num_classes: int,
                    crop_size: int, panels: list[np.ndarray] | None = None, max_panels: int = 2,
                    on_sample=None, meter: PixelMeter | None = None) -> dict[str, float]:
    """Pooled metrics; if ``panels`` is a list, the first samples' pictures (input | seg truth |
    seg prediction | depth truth | depth prediction, half size) are appended to it on the way;
    ``on_sample(index, seg, depth)`` receives each sample's predictions exactly as the metrics saw them;
    ``meter``: an empty PixelMeter to accumulate into (the caller reads more from it, e.g. per-class IoU)."""
    meter = meter if meter is not None else PixelMeter(num_classes, device)
    for batch, seg, depth in predict_frames(model_fn, loader, crop_size, device, limit):
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


class PixelFamily(FusedFamily):
    """NYUv2: segmentation (the dataset's classes) and depth, DeepLabv3+ networks."""

    kind = "pixel"
    description = "Train AFA pixel networks on NYUv2: semantic segmentation + depth, DeepLabv3+ branches"
    script = "train_pixel.py"
    # The reference recipe: SGD momentum 0.9, poly schedule; ASPP and decoders at 10x the backbone rate.
    defaults: ClassVar[dict[str, Any]] = dict(crop_size=300, epochs=60, batch_size=8, lr=0.007, weight_decay=1e-4,
                                              schedule="poly")
    eval_options = ("per_class",)
    predict_options = ("overlay", "native_scale")
    protocols = (Protocol("nyuv2", "train_pixel.py", ("none", "shared", "cross_stitch", "nddr", "afa"),
                          seeds=(0, 1, 2), per_class=True),)
    hub_entry = "afanet_pixel"
    hub_doc = "NYUv2 network (DeepLabv3+ branches): semantic segmentation + depth in metres, in eval mode."
    eval_batch_size = 2  # full frames, each split into windows

    @classmethod
    def add_args(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--depth-loss", choices=DEPTH_LOSSES, default="berhu",
                           help="depth loss on valid pixels (ground truth > 0)")

    # -- training ------------------------------------------------------------------------------

    def datasets(self) -> Datasets:
        s = self.settings
        train = NYUv2(s.data_root, "train_noval", val_fraction=s.val_fraction, val_seed=VAL_SEED)
        val = NYUv2(s.data_root, "val", val_fraction=s.val_fraction, val_seed=VAL_SEED)
        return Datasets(train, val, PixelTrainTransform(s.crop_size), PixelEvalTransform(s.crop_size))

    def tasks(self, train: Dataset) -> dict[str, int]:
        return {"seg": train.num_classes, "depth": 1}

    def data_info(self, train: Dataset) -> dict[str, Any]:
        height, width = train[0]["image"].shape[-2:]
        return {"dataset": "nyuv2", "layout": train.layout, "frame_size": [int(height), int(width)],
                "labels": {"seg": list(train.class_names)}, "units": {"depth": "metres"}}

    def losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return pixel_losses(out, batch, self.settings.depth_loss)

    def evaluate(self, model_fn, loader, device, limit=None, panels=None) -> dict[str, float]:
        return evaluate_frames(model_fn, loader, device, limit, self.num_classes, self.settings.crop_size, panels)

    @cached_property
    def num_classes(self) -> int:
        """Classes of the dataset's labels (its meta data: no frame is read)."""
        return NYUv2(self.settings.data_root, "test").num_classes

    @classmethod
    def score(cls, metrics: Mapping[str, float]) -> float:
        """One number per task in [0, 1]: the mean of seg mIoU and depth delta1."""
        return (metrics["seg/miou"] + metrics["depth/delta1"]) / 2

    def val_batch_size(self) -> int:
        return max(1, self.settings.batch_size // 2)  # full frames: each holds several windows

    # -- eval.py -------------------------------------------------------------------------------

    def test(self, model_fn: ModelFn, model_config: Mapping[str, Any], args: argparse.Namespace,
             device: torch.device) -> dict[str, float]:
        """The official test split at label resolution; ``--save-predictions``: <index>.npz (seg, depth);
        ``--per-class``: {class name: IoU}; ``--plot``: a qualitative grid."""
        size = model_config["input_size"]
        dataset = NYUv2(self.settings.data_root, "test", transform=PixelEvalTransform(size))
        if dataset.num_classes != model_config["tasks"]["seg"]:
            raise DataError(f"{self.settings.data_root}: {dataset.num_classes}-class labels, but the checkpoint "
                            f"predicts {model_config['tasks']['seg']} classes")
        loader = DataLoader(dataset, batch_size=args.batch_size or self.eval_batch_size, num_workers=args.workers)
        out_dir = Path(args.save_predictions) if args.save_predictions else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)

        def save(index: int, seg: np.ndarray, depth: np.ndarray) -> None:
            np.savez(out_dir / f"{index}.npz", seg=seg, depth=depth)

        panels: list[np.ndarray] = []
        meter = PixelMeter(dataset.num_classes, device)
        metrics = evaluate_frames(model_fn, loader, device, args.limit_batches, dataset.num_classes, size,
                                  panels if args.plot else None, max_panels=4, on_sample=save if out_dir else None,
                                  meter=meter)
        if args.per_class:
            iou = {name: (None if math.isnan(v) else v) for name, v in zip(dataset.class_names, meter.class_iou())}
            Path(args.per_class).parent.mkdir(parents=True, exist_ok=True)
            Path(args.per_class).write_text(json.dumps(iou, indent=2))
            print(f"wrote {args.per_class}")
        if panels:
            print(f"wrote {plot_grid(panels, Path(args.plot) / 'qualitative.png')}")
        return metrics

    # -- predict.py and released weights ----------------------------------------------------------

    @classmethod
    def preprocessing(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        size = int(model_config["input_size"])
        pre: dict[str, Any] = {"input_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                               "scale": "RGB uint8 / 255, then (x - mean) / std",
                               "windows": f"the image is covered by {size} x {size} windows (stride {2 * size // 3}) "
                                          "and every output is averaged over the windows covering a pixel "
                                          "(data/transforms.py)"}
        if data.get("frame_size"):
            pre["frame_size"] = list(data["frame_size"])
            pre["resize"] = (f"shorter side to {min(data['frame_size'])} px (the training frames) before the "
                             "windows, outputs brought back to the photo's size")
        return pre

    @classmethod
    def labels(cls, model_config: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, list[str]]:
        """The class names the checkpoint recorded; else NYUv2's table with the checkpoint's class count."""
        channels = model_config["tasks"]["seg"]
        recorded = (data.get("labels") or {}).get("seg")
        if recorded and len(recorded) == channels:
            return {"seg": list(recorded)}
        tables = [t for t in (CLASS_NAMES_40, CLASS_NAMES_13) if len(t) == channels]
        return {"seg": list(tables[0]) if tables else [f"class_{k}" for k in range(channels)]}

    @classmethod
    def predict(cls, model_fn: ModelFn, info: Mapping[str, Any], reader: Iterable, args: argparse.Namespace,
                device: torch.device) -> None:
        """Per image: OUT/<name>.npz (seg (H, W) int64, depth (H, W) float32 metres), <name>_seg.png (palette:
        pixel value = class id), <name>_depth.png (viridis), with --overlay <name>_overlay.png; labels.json.

        Photos are brought to the training frames' scale (shorter side = theirs) unless --native-scale or
        the checkpoint does not record it; the outputs come back at the photo's size."""
        out, pre = Path(args.out), info["preprocessing"]
        size = pre["input_size"]
        frame = None if args.native_scale else pre.get("frame_size")
        if info["model_config"]["tasks"]["seg"] > 256:
            print("warning: more than 256 classes: <name>_seg.png holds ids modulo 256 (the .npz holds them all)",
                  file=sys.stderr)
        names = UniqueNames()
        single = len(getattr(reader, "files", ())) == 1  # a bar over the windows; several photos: predict.py's bar
        for path, image in reader:
            height, width = image.shape[-2:]
            work = image if frame is None else resize_shorter_side(image, min(frame))
            # (1, 3, h, w), as eval.py's DataLoader gives PixelEvalTransform's output
            x = normalize(work)[None].to(device)
            with tqdm(total=count_windows(*work.shape[-2:], size), unit="window", leave=False, file=sys.stderr,
                      desc=path.name, disable=not single) as bar:
                outputs = sliding_window_predict(model_fn, x, size, on_window=lambda: bar.update(1))
            seg = argmax_at_size(outputs["seg"][0], (height, width)).cpu().numpy()
            depth = resize_scores(outputs["depth"][0], (height, width))[0].cpu().numpy().astype(np.float32)
            name = names(path)
            np.savez(out / f"{name}.npz", seg=seg, depth=depth)
            seg_png(seg).save(out / f"{name}_seg.png")
            picture, text = depth_png(depth)
            picture.save(out / f"{name}_depth.png", pnginfo=text)
            if args.overlay:
                photo = image.permute(1, 2, 0).numpy()
                blend = (1 - OVERLAY_ALPHA) * photo + (OVERLAY_ALPHA * 255) * color_seg(seg)
                Image.fromarray(np.rint(blend).astype(np.uint8)).save(out / f"{name}_overlay.png")
        if names.used:
            (out / "labels.json").write_text(json.dumps({"seg": info["labels"].get("seg"), "depth": "metres"},
                                                        indent=2))

    # -- bench.py and the demo -----------------------------------------------------------------

    @classmethod
    def random_batch(cls, model_config: Mapping[str, Any], batch: int, generator: torch.Generator
                     ) -> dict[str, Tensor]:
        """Images (B, 3, S, S); seg with ~10 % IGNORE_INDEX, depth in 0.5..10 m with ~10 % invalid (0)."""
        size, classes = model_config["input_size"], model_config["tasks"]["seg"]
        seg = torch.randint(0, classes, (batch, size, size), generator=generator)
        seg[torch.rand(seg.shape, generator=generator) < 0.1] = IGNORE_INDEX
        depth = 0.5 + 9.5 * torch.rand(batch, 1, size, size, generator=generator)
        depth[torch.rand(depth.shape, generator=generator) < 0.1] = 0.0
        return {"image": torch.randn(batch, 3, size, size, generator=generator), "seg": seg, "depth": depth}

    @classmethod
    def write_synthetic(cls, folder: Path) -> Path:
        """24 rendered rooms as the official .mat files (480 x 640), prepared."""
        raw = write_nyuv2(folder / "raw", n=24)
        return prepare_nyuv2(raw / "nyu_depth_v2_labeled.mat", raw / "splits.mat", folder / "nyuv2", progress=False)

    @classmethod
    def baseline(cls, data_root: str, **settings: Any) -> dict[str, float]:
        """The majority training class everywhere and the mean valid training depth everywhere, on the test split."""
        train = NYUv2(data_root, "train")
        counts = np.bincount(np.concatenate([s["seg"].flatten().numpy() for s in train]), minlength=IGNORE_INDEX + 1)
        depths = np.concatenate([s["depth"].flatten().numpy() for s in train])
        majority, mean_depth = int(counts[:IGNORE_INDEX].argmax()), float(depths[depths > 0].mean())
        test = NYUv2(data_root, "test")
        meter = PixelMeter(test.num_classes)
        for s in test:
            meter.update(torch.full_like(s["seg"], majority), s["seg"], torch.full_like(s["depth"][0], mean_depth),
                         s["depth"][0])
        return meter.compute()


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


def resize_scores(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, h, w) -> (C, H, W) bilinearly (align_corners=False); unchanged when the size is the same."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def argmax_at_size(scores: Tensor, size: tuple[int, int], rows: int = STRIP_ROWS) -> Tensor:
    """Class ids (H, W) int64 of the scores (C, h, w) brought bilinearly to ``size``, in strips of ``rows`` output
    rows: the same values as ``resize_scores(scores, size).argmax(0)`` without a (C, H, W) float buffer (40 classes
    x 12 megapixels would be 1.9 GB).

    Bilinear interpolation is separable: each output row is a blend of two source rows (PyTorch's
    align_corners=False source index, computed the same way), then every strip is interpolated along the width.
    """
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores.argmax(0)
    channels, h, w = scores.shape
    height, width = size
    scale = torch.tensor(h, dtype=torch.float32) / height  # as PyTorch: input / output size, in float32
    src = ((torch.arange(height, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    y0 = src.long().clamp_max(h - 1)
    y1 = (y0 + 1).clamp_max(h - 1)
    lam = (src - y0).to(scores.dtype).to(scores.device)
    y0, y1 = y0.to(scores.device), y1.to(scores.device)
    out = torch.empty(height, width, dtype=torch.int64, device=scores.device)
    for top in range(0, height, rows):
        part = slice(top, min(top + rows, height))
        weight = lam[part].view(1, -1, 1)
        band = scores[:, y0[part]] * (1 - weight) + scores[:, y1[part]] * weight  # (C, n, w)
        band = F.interpolate(band[None], size=(band.shape[1], width), mode="bilinear", align_corners=False)[0]
        out[part] = band.argmax(0)
    return out


def seg_png(seg: np.ndarray) -> Image.Image:
    """(H, W) class ids -> palette PNG whose pixel values are the ids (ids >= 256 are not representable)."""
    ids = np.arange(256)
    colours = np.rint(color_seg(ids) * 255).astype(np.uint8)  # the plots' colours, id by id
    img = Image.fromarray(seg.astype(np.uint8), mode="P")
    img.putpalette(colours.reshape(-1).tolist())
    return img


def depth_png(depth: np.ndarray) -> tuple[Image.Image, PngInfo]:
    """(H, W) metres -> colour PNG over [0, max] and text chunks with the range and the colour map."""
    vmax = float(max(depth.max(), 1e-3))
    info = PngInfo()
    info.add_text("depth_min_m", "0")
    info.add_text("depth_max_m", f"{vmax:.6g}")
    info.add_text("colormap", "viridis, 0 m = dark purple, depth_max_m = yellow; depth <= 0 black")
    return Image.fromarray(depth_rgb8(depth, vmax)), info
