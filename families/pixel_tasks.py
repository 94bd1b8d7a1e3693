"""The pixel tasks, one class each: what a task's target is, how its network output becomes a prediction,
which meter scores it, and how it is drawn and saved. The pixel family (families/pixel.py) asks these
for every task a run has (``--tasks``), so that two or three tasks go through the same code.

| task | output channels | prediction | target (sample key), invalid | meter (engine.metrics) |
|---|---|---|---|---|
| seg | the dataset's classes | class ids (H, W), the argmax | 'seg' int64, IGNORE_INDEX | SegMeter |
| depth | 1 | (H, W): metres, or disparity (Cityscapes) | 'depth' (1, H, W), 0 | DepthMeter |
| normal | 3, L2-normalised by the network | (3, H, W) unit vectors | 'normal' (3, H, W), all-zero | NormalMeter |
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from data.labels import IGNORE_INDEX
from engine.metrics import DepthMeter, NormalMeter, SegMeter
from engine.viz import color_depth, color_seg, depth_rgb8

STRIP_ROWS = 64  # rows per strip when scores are brought back to a large photo's size


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
    _, h, _ = scores.shape
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


class PixelTask:
    """One pixel task. ``name`` is the task (the network's output key), ``key`` its target in a sample."""

    name: ClassVar[str]
    key: ClassVar[str]
    unit: ClassVar[bool] = False  # outputs L2-normalised per pixel by the network

    @classmethod
    def channels(cls, dataset: Any) -> int:
        raise NotImplementedError

    @classmethod
    def decode(cls, scores: Tensor) -> Tensor:
        """Window-averaged network output (B, C, H, W) -> the prediction the metrics and files see."""
        raise NotImplementedError

    @classmethod
    def meter(cls, num_classes: int, device: torch.device) -> Any:
        raise NotImplementedError

    @classmethod
    def truth(cls, batch: dict[str, Any]) -> Tensor:
        """The target in the prediction's layout."""
        return batch[cls.key]

    @classmethod
    def at_size(cls, scores: Tensor, size: tuple[int, int]) -> Tensor:
        """One image's output (C, h, w) brought to a photo's size, decoded: predict.py's large photos."""
        return cls.decode(resize_scores(scores, size)[None])[0]

    @classmethod
    def picture(cls, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        """(H, W, 3) floats in [0, 1] for panels; ``truth`` sets a shared colour range."""
        raise NotImplementedError

    @classmethod
    def png(cls, prediction: np.ndarray) -> tuple[Image.Image, PngInfo | None]:
        """predict.py's picture of a prediction."""
        raise NotImplementedError

    @classmethod
    def random_target(cls, channels: int, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
        """A valid random target for a batch of (B, H, W), with some pixels without ground truth."""
        raise NotImplementedError

    @classmethod
    def trivial(cls, train: Any) -> Tensor:
        """The trivial predictor's one value for every pixel, from the training split: the mean of the valid
        targets (segmentation: the majority class)."""
        values = torch.cat([s[cls.key].flatten(1) for s in train], dim=1)  # (C, pixels)
        valid = torch.linalg.vector_norm(values, dim=0) > 0
        return values[:, valid].double().mean(1).float()

    @classmethod
    def everywhere(cls, value: Tensor, size: tuple[int, int]) -> Tensor:
        """A prediction (1, ..) of ``size`` holding ``value`` at every pixel."""
        return value.view(1, -1, 1, 1).expand(1, value.numel(), *size)


class Segmentation(PixelTask):
    name, key = "seg", "seg"

    @classmethod
    def channels(cls, dataset: Any) -> int:
        return dataset.num_classes

    @classmethod
    def decode(cls, scores: Tensor) -> Tensor:
        return scores.argmax(1)  # (B, H, W) class ids

    @classmethod
    def at_size(cls, scores: Tensor, size: tuple[int, int]) -> Tensor:
        return argmax_at_size(scores, size)  # strip by strip: no (C, H, W) buffer at the photo's size

    @classmethod
    def meter(cls, num_classes: int, device: torch.device) -> SegMeter:
        return SegMeter(num_classes, device)

    @classmethod
    def picture(cls, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        return color_seg(prediction)

    @classmethod
    def png(cls, prediction: np.ndarray) -> tuple[Image.Image, PngInfo | None]:
        """A palette PNG whose pixel values are the class ids (ids >= 256 are not representable)."""
        colours = np.rint(color_seg(np.arange(256)) * 255).astype(np.uint8)  # the plots' colours, id by id
        img = Image.fromarray(prediction.astype(np.uint8), mode="P")
        img.putpalette(colours.reshape(-1).tolist())
        return img, None

    @classmethod
    def trivial(cls, train: Any) -> Tensor:
        labels = torch.cat([s["seg"].flatten() for s in train])
        return torch.bincount(labels[labels != IGNORE_INDEX]).argmax()

    @classmethod
    def everywhere(cls, value: Tensor, size: tuple[int, int]) -> Tensor:
        return value.expand(1, *size)

    @classmethod
    def random_target(cls, channels: int, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
        seg = torch.randint(0, channels, shape, generator=g)
        seg[torch.rand(shape, generator=g) < 0.1] = IGNORE_INDEX
        return seg


class Depth(PixelTask):
    """Depth in metres (NYUv2), or Cityscapes' disparity (its 'depth' target by default)."""

    name, key = "depth", "depth"

    @classmethod
    def channels(cls, dataset: Any) -> int:
        return 1

    @classmethod
    def decode(cls, scores: Tensor) -> Tensor:
        return scores[:, 0]  # (B, H, W)

    @classmethod
    def truth(cls, batch: dict[str, Any]) -> Tensor:
        return batch["depth"][:, 0]

    @classmethod
    def everywhere(cls, value: Tensor, size: tuple[int, int]) -> Tensor:
        return value.view(1, 1, 1).expand(1, *size)

    @classmethod
    def meter(cls, num_classes: int, device: torch.device) -> DepthMeter:
        return DepthMeter(device)

    @classmethod
    def picture(cls, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        vmax = float(max((truth if truth is not None else prediction).max(), 1e-3))
        return color_depth(prediction, vmax)

    @classmethod
    def png(cls, prediction: np.ndarray) -> tuple[Image.Image, PngInfo | None]:
        """'viridis' over [0, max]; the range and the colour map in the PNG's text chunks."""
        vmax = float(max(prediction.max(), 1e-3))
        info = PngInfo()
        info.add_text("depth_min_m", "0")
        info.add_text("depth_max_m", f"{vmax:.6g}")
        info.add_text(
            "colormap",
            "viridis, 0 = dark purple, depth_max_m = yellow; <= 0 black (depth_max_m is in "
            "the unit of labels.json: metres, or disparity pixels)",
        )
        return Image.fromarray(depth_rgb8(prediction, vmax)), info

    @classmethod
    def random_target(cls, channels: int, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
        depth = 0.5 + 9.5 * torch.rand(shape[0], 1, *shape[1:], generator=g)
        depth[torch.rand(depth.shape, generator=g) < 0.1] = 0.0
        return depth


class Normal(PixelTask):
    """Surface normals: unit vectors (x right, y down, z towards the camera), 3 channels."""

    name, key, unit = "normal", "normal", True

    @classmethod
    def channels(cls, dataset: Any) -> int:
        return 3

    @classmethod
    def decode(cls, scores: Tensor) -> Tensor:
        # the network's outputs are unit vectors; their average over windows is shorter: back to unit length
        return F.normalize(scores, dim=1)  # (B, 3, H, W)

    @classmethod
    def meter(cls, num_classes: int, device: torch.device) -> NormalMeter:
        return NormalMeter(device)

    @classmethod
    def trivial(cls, train: Any) -> Tensor:
        return F.normalize(super().trivial(train), dim=0)  # the mean direction

    @classmethod
    def picture(cls, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        return np.clip((prediction.transpose(1, 2, 0) + 1) / 2, 0, 1).astype(np.float32)  # (n + 1) / 2 as RGB

    @classmethod
    def png(cls, prediction: np.ndarray) -> tuple[Image.Image, PngInfo | None]:
        info = PngInfo()
        info.add_text("normals", "RGB = (n + 1) / 2 of unit vectors (x right, y down, z towards the camera)")
        rgb = np.rint(cls.picture(prediction) * 255).astype(np.uint8)
        return Image.fromarray(rgb), info

    @classmethod
    def random_target(cls, channels: int, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
        normal = F.normalize(torch.randn(shape[0], 3, *shape[1:], generator=g), dim=1)
        return normal * (torch.rand(shape[0], 1, *shape[1:], generator=g) >= 0.1)  # ~10 % invalid (zero)


PIXEL_TASKS: dict[str, type[PixelTask]] = {t.name: t for t in (Segmentation, Depth, Normal)}
