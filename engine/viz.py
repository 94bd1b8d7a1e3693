"""Colour maps for segmentation and depth, and side-by-side panels for TensorBoard and plots."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps

from data.labels import IGNORE_INDEX
from data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _palette(n: int = 256) -> np.ndarray:
    """A fixed palette (the PASCAL VOC bit-interleaving scheme); id 255 (ignore) is black."""
    pal = np.zeros((n, 3), dtype=np.float32)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal[IGNORE_INDEX] = 0
    return pal / 255.0


PALETTE = _palette()


def color_seg(seg: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) colours in [0, 1]; class k gets palette entry k + 1 so that
    class 0 is not black like the ignore label."""
    ids = np.where(seg == IGNORE_INDEX, IGNORE_INDEX, (seg.astype(np.int64) + 1) % IGNORE_INDEX)
    return PALETTE[ids]


def color_depth(depth: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) with the 'viridis' map over [0, vmax]; invalid (0) is black."""
    rgb = colormaps["viridis"](np.clip(depth / max(vmax, 1e-6), 0, 1))[..., :3]
    rgb[depth <= 0] = 0
    return rgb.astype(np.float32)


def depth_rgb8(depth: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with the 'viridis' map over [0, vmax]; invalid (0) is black. Works
    in uint8 and float32 (a 12-megapixel map needs ~100 MB, not the ~400 MB of float64 RGBA)."""
    scaled = np.clip(depth.astype(np.float32) / np.float32(max(vmax, 1e-6)), 0, 1)
    rgb = colormaps["viridis"](scaled, bytes=True)[..., :3]
    rgb[depth <= 0] = 0
    return np.ascontiguousarray(rgb)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) -> (H, W, 3) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def pixel_panel(
    image: torch.Tensor, seg_true: np.ndarray, seg_pred: np.ndarray, depth_true: np.ndarray, depth_pred: np.ndarray
) -> np.ndarray:
    """One row: input | seg truth | seg prediction | depth truth | depth prediction, (H, 5W, 3)."""
    vmax = float(max(depth_true.max(), 1e-3))
    return np.concatenate(
        [
            denormalize(image),
            color_seg(seg_true),
            color_seg(seg_pred),
            color_depth(depth_true, vmax),
            color_depth(depth_pred, vmax),
        ],
        axis=1,
    )
