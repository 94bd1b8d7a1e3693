"""Sample-dict transforms for the pixel tasks (NYUv2) and the image tasks (Adience), on tensors.

Images stay uint8 until the last step (float32 + ImageNet normalisation). Keys a transform does not know ('index',
'path', 'gender', 'age', ...) pass through unchanged, so batches collate with torch's default_collate.

Pixel training (``PixelTrainTransform``): scale the whole sample by s ~ U(0.5, 2.0) (bilinear with antialias for the
image; nearest for seg, depth and normals so that ignore labels and invalid zeros are never blended), pad on the
bottom/right to at least crop_size (image 0, seg 255, depth 0, normal 0), take a random crop_size x crop_size crop,
flip horizontally with p = 0.5 (negating the x component of normals), jitter the image colours, normalise. Depth
values stay in metres: scaling resamples the image, it does not move the camera.

Pixel evaluation protocol (``PixelEvalTransform`` + ``sliding_window_predict``): metrics are computed on the full
frame at label resolution. The AFA network's SAM has a fixed spatial size, so the network only accepts
crop_size x crop_size inputs; the normalised full-resolution image is tiled with crop_size windows. Along an axis of
length L > crop, n = ceil((L - crop) / stride) + 1 windows start at round(i * (L - crop) / (n - 1)), i = 0..n-1: the
first and last windows are flush with the borders and neighbours overlap by at least crop - stride (default stride
= 2 * crop // 3). Every output (segmentation logits, depth in metres, any other key) is averaged over the windows
covering a pixel. An axis shorter than the crop is padded with 0 (the mean colour after normalisation) at the
bottom/right and the outputs are cropped back. Example: a 480 x 640 NYUv2 frame with crop 300 (stride 200) gives
windows at y in {0, 180} and x in {0, 170, 340}: 6 windows per frame.

Image tasks (``ImageTrainTransform`` / ``ImageEvalTransform``): resize the shorter side to 256, random (train) or
centre (eval) 224 x 224 crop, random horizontal flip (train), normalise.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_FILL = {"seg": IGNORE_INDEX, "depth": 0.0, "normal": 0.0}  # image pads with 0 too


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a crop or window size given as a side (a square) or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def unit_normals(normal: Tensor) -> Tensor:
    """Normals (3, H, W) scaled back to unit length; invalid (all-zero) vectors stay zero."""
    norm = torch.linalg.vector_norm(normal, dim=0, keepdim=True)
    return torch.where(norm > 0, normal / norm.clamp_min(1e-12), 0.0)


def normalize(image: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 (..., 3, H, W) scaled to [0, 1] and ImageNet-normalised."""
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


class PixelTrainTransform:
    """Training augmentation for pixel-task samples (NYUv2, Cityscapes; see the module docstring).

    Input: 'image' uint8 (3, H, W), 'seg' int64 (H, W), optional 'depth' float32 (1, H, W) and 'normal' (3, H, W).
    Output: 'image' float32 (3, h, w), 'seg' int64 (h, w), 'depth' (1, h, w), 'normal' (3, h, w), (h, w) = crop_size.

    Args:
        crop_size: the crop, a side (square) or (height, width).
        scale: range of the random scale factor.
        flip_p: probability of a horizontal flip (normals' x component negated).
        jitter: (brightness, contrast, saturation, hue) for v2.ColorJitter on the image only; None disables it.
        disparity: 'depth' holds disparity in pixels (Cityscapes): a resize scales it with the width. Metric
            depth (NYUv2) stays as it is: resampling the image does not move the camera.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = 300,
        scale: tuple[float, float] = (0.5, 2.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.0),
        disparity: bool = False,
    ) -> None:
        self.crop_size = crop_size
        self.scale = scale
        self.flip_p = flip_p
        self.jitter = v2.ColorJitter(*jitter) if jitter else None
        self.disparity = disparity

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        image = sample["image"]
        # seg as uint8 (1, H, W) so every map goes through the same resize / pad / crop calls
        maps = {k: sample[k] for k in PAD_FILL if k in sample}
        maps["seg"] = maps["seg"].to(torch.uint8)[None]
        s = torch.empty(()).uniform_(*self.scale).item()
        size = [max(1, round(image.shape[-2] * s)), max(1, round(image.shape[-1] * s))]
        width_factor = size[1] / image.shape[-1]
        image = F.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
        # nearest: ignore labels and invalid zeros are never blended, normals stay unit vectors
        maps = {k: F.resize(m, size, InterpolationMode.NEAREST) for k, m in maps.items()}
        if self.disparity and "depth" in maps:  # disparity in pixels grows with the image width
            maps["depth"] = maps["depth"] * width_factor
        if "normal" in maps:
            maps["normal"] = unit_normals(maps["normal"])
        crop_h, crop_w = hw(self.crop_size)
        pad = [0, 0, max(crop_w - size[1], 0), max(crop_h - size[0], 0)]  # left, top, right, bottom
        if any(pad):
            image = F.pad(image, pad, fill=0)
            maps = {k: F.pad(m, pad, fill=PAD_FILL[k]) for k, m in maps.items()}
        height, width = image.shape[-2:]
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        image = F.crop(image, top, left, crop_h, crop_w)
        maps = {k: F.crop(m, top, left, crop_h, crop_w) for k, m in maps.items()}
        if torch.rand(()) < self.flip_p:
            image = F.horizontal_flip(image)
            maps = {k: F.horizontal_flip(m) for k, m in maps.items()}
            if "normal" in maps:
                maps["normal"] = maps["normal"] * torch.tensor([-1.0, 1.0, 1.0])[:, None, None]
        if self.jitter is not None:
            image = self.jitter(image)
        out.update(maps)
        out["seg"] = maps["seg"][0].long()
        out["image"] = normalize(image)
        return out


class PixelEvalTransform:
    """Evaluation transform for NYUv2: normalised full-resolution float32 image (3, H, W); labels untouched.

    ``crop_size`` is the network's input size, to pass to ``sliding_window_predict`` (the protocol is in the module
    docstring).
    """

    def __init__(self, crop_size: int | tuple[int, int] = 300) -> None:
        if min(hw(crop_size)) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, "image": normalize(sample["image"])}


def window_starts(length: int, crop_size: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows along one axis: evenly spaced, first at 0, last flush with the end."""
    if length <= crop_size:
        return [0]
    n = math.ceil((length - crop_size) / stride) + 1
    return [round(i * (length - crop_size) / (n - 1)) for i in range(n)]


def window_strides(crop_size: int | Sequence[int], stride: int | Sequence[int] | None = None) -> tuple[int, int]:
    """(vertical, horizontal) strides of the windows: two thirds of the window by default."""
    crop_h, crop_w = hw(crop_size)
    return (2 * crop_h // 3, 2 * crop_w // 3) if stride is None else hw(stride)


def count_windows(
    height: int, width: int, crop_size: int | Sequence[int], stride: int | Sequence[int] | None = None
) -> int:
    """Number of windows ``sliding_window_predict`` runs on an image of height x width."""
    (crop_h, crop_w), (stride_h, stride_w) = hw(crop_size), window_strides(crop_size, stride)
    return len(window_starts(max(height, crop_h), crop_h, stride_h)) * len(
        window_starts(max(width, crop_w), crop_w, stride_w)
    )


WINDOW_BATCH = 8  # windows per forward pass (a batch of 1 wastes most of a CPU's or GPU's throughput)


@torch.no_grad()
def sliding_window_predict(
    model_fn: Callable[[Tensor], dict[str, Tensor]],
    image: Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    on_window: Callable[[], None] | None = None,
    window_batch: int = WINDOW_BATCH,
) -> dict[str, Tensor]:
    """Full-resolution predictions from a network that only accepts inputs of one size, ``crop_size`` (a side, or
    (height, width)).

    image: normalised float (B, 3, H, W) (or (3, H, W), treated as B = 1). model_fn maps windows (N, 3, h, w) to a
    dict of (N, C_k, h, w) outputs. Returns {key: (B, C_k, H, W)}, each the average over the covering windows.
    Up to ``window_batch`` windows (of every image of the batch) go through the network in one call; the sums are
    taken in window order whatever the batching. ``on_window`` is called after each window (a progress bar's
    update; ``count_windows`` gives the total).
    """
    (crop_h, crop_w), (stride_h, stride_w) = hw(crop_size), window_strides(crop_size, stride)
    if not (1 <= stride_h <= crop_h and 1 <= stride_w <= crop_w):
        raise ValueError(f"stride must be in 1..crop_size={crop_size}, got {stride}")
    if image.ndim == 3:
        image = image[None]
    batch, _, height, width = image.shape
    # zeros = the mean colour after normalisation; outputs over the padding are cropped away below
    image = torch.nn.functional.pad(image, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)))
    padded = image.shape[-2:]
    starts = [
        (y, x) for y in window_starts(padded[0], crop_h, stride_h) for x in window_starts(padded[1], crop_w, stride_w)
    ]
    sums: dict[str, Tensor] = {}
    count = torch.zeros(padded, device=image.device)
    for first in range(0, len(starts), max(window_batch, 1)):
        chunk = starts[first : first + max(window_batch, 1)]
        windows = torch.cat([image[..., y : y + crop_h, x : x + crop_w] for y, x in chunk])  # (n * B, 3, h, w)
        outputs = model_fn(windows)
        for key, value in outputs.items():
            if value.ndim != 4 or value.shape[0] != len(windows) or tuple(value.shape[-2:]) != (crop_h, crop_w):
                raise ValueError(
                    f"model output {key!r} has shape {tuple(value.shape)}; expected ({len(windows)}, C, {crop_h}, "
                    f"{crop_w}) (upsample outputs to the window size)"
                )
            if key not in sums:  # accumulate in at least float32, also under autocast
                dtype = torch.promote_types(value.dtype, torch.float32)
                sums[key] = value.new_zeros(batch, value.shape[1], *padded, dtype=dtype)
        for k, (y, x) in enumerate(chunk):
            for key, value in outputs.items():
                sums[key][..., y : y + crop_h, x : x + crop_w] += value[k * batch : (k + 1) * batch]
            count[y : y + crop_h, x : x + crop_w] += 1
            if on_window is not None:
                on_window()
    return {key: (total / count.to(total.device))[..., :height, :width] for key, total in sums.items()}


class _ImageTransform:
    """Apply a uint8 image pipeline to sample['image'], then normalise; other keys pass through."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, "image": normalize(self.pipeline(sample["image"]))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


class ImageTrainTransform(_ImageTransform):
    """Adience training: shorter side -> resize, random crop_size crop, horizontal flip; 'image' float32 (3, S, S)."""

    def __init__(self, resize: int = 256, crop_size: int = 224, flip_p: float = 0.5) -> None:
        super().__init__(
            v2.Compose(
                [
                    v2.Resize(resize, antialias=True),
                    v2.RandomCrop(crop_size, pad_if_needed=True),
                    v2.RandomHorizontalFlip(flip_p),
                ]
            )
        )


class ImageEvalTransform(_ImageTransform):
    """Adience evaluation: shorter side -> resize, centre crop_size crop; 'image' float32 (3, S, S)."""

    def __init__(self, resize: int = 256, crop_size: int = 224) -> None:
        super().__init__(v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop_size)]))
