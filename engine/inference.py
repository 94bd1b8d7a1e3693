"""Inference plumbing shared by training (validation), eval.py, predict.py and the benchmark: the one
model function, evaluation batches, and images read the way people have them.

Images (``read_image``) come out as uint8 RGB (3, H, W), the form the datasets give the
transforms, so that a PNG of a test frame goes through exactly eval.py's numbers:

- EXIF orientation is applied (a phone photo is seen upright, as viewers show it);
- 16-bit images (PNG 'I;16', 'I') are scaled to 8 bit by ``round(v * 255 / 65535)``, i.e. the full
  16-bit range maps to the full 8-bit range (values outside 0..65535 are clipped); 16-bit RGB PNGs are
  reduced to 8 bit by Pillow itself;
- grayscale is repeated into three channels;
- transparency (RGBA, LA, palette images with a transparent colour) is composited on white, as a
  viewer on a white page shows it: fully transparent pixels carry arbitrary colours otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from .precision import autocast

# Suffixes taken from input folders (a file named on the command line is tried whatever its suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")

ModelFn = Callable[..., dict[str, Tensor]]


class UnreadableImage(Exception):
    """A file that cannot be decoded as an image; the message names the file and the reason."""


def model_fn(model: nn.Module, device: torch.device, amp: str = "none", channels_last: bool = False) -> ModelFn:
    """The network as evaluation and prediction call it: inputs in the run's memory format, the forward
    under the run's autocast, every output back in float32 (metrics and saved predictions are float32
    whatever the precision). Pass the unwrapped model: under DDP, ranks evaluate unequal shares and
    DDP's forward would wait for buffers from ranks that have finished."""

    def forward(*xs: Tensor) -> dict[str, Tensor]:
        if channels_last:
            xs = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in xs)
        with autocast(device, amp):
            return {k: v.float() for k, v in model(*xs).items()}

    return forward


def batches(loader: Iterable, limit: int | None = None) -> Iterator[Any]:
    """The loader's batches, at most ``limit`` of them (None: all)."""
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        yield batch


def find_inputs(inputs: list[str]) -> list[Path]:
    """Files named on the command line (any suffix) and the image files under named folders (recursively,
    sorted, hidden files skipped), in the order given, each once. A path that does not exist is kept:
    it is reported as unreadable with the other failures."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(
                p
                for p in item.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
            )
        else:
            files.append(item)
    return list(dict.fromkeys(files))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """uint8 RGB (3, H, W) of an image file (conversions in the module docstring); UnreadableImage if it
    cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT:
                wide = np.asarray(img, dtype=np.float64)
                gray = np.rint(np.clip(wide, 0, 65535) * (255 / 65535)).astype(np.uint8)
                rgb = np.repeat(gray[..., None], 3, axis=2)
            elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            else:
                rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UnreadableImage(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableImage(f"{path}: cannot read it as an image ({reason})") from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
