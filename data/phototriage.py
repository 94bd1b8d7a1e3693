"""Phototriage (Chang et al., "Automatic Triage for a Photo Series", SIGGRAPH 2016): pairs of photos
of one series with the share of raters who preferred the first.

Layout (the official ``train_val.zip`` and ``test.zip`` unpacked side by side)::

    root/train_val/train_val_imgs/SSSSSS-II.JPG    series id, 6 digits; photo index (1-based), 2 digits
    root/train_val/train_pairlist.txt
    root/train_val/val_pairlist.txt
    root/test/test_imgs/SSSSSS-II.JPG
    root/test/test_pairlist.txt

A pair-list line holds six whitespace-separated fields ``series i j p rank_i rank_j``: p is the
fraction of raters who preferred photo i over photo j; ranks are inside the series, 1 = best.
Pairs with p = 0.5 exactly carry no label: they are left out (and counted, ``ties``, in the log).

Samples (``transform=None``): ``'a'``, ``'b'`` uint8 (3, H, W) RGB photos i and j as stored,
``'series'``, ``'i'``, ``'j'`` ints, ``'p'`` float, ``'target'`` 0 when photo i is preferred
(p > 0.5), 1 otherwise (the network's class 0 = "A wins"), ``'index'`` the pair's position.

Pair transforms treat both photos alike: ``PairEvalTransform`` (the original's FixScaleCrop:
shorter side to the crop size, centre crop, ImageNet normalisation) and ``PairTrainTransform``
(the same, plus optional horizontal flip of both photos and optional swap of the pair with
the target, p, i and j swapped; both off by default, as the original recipe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from data.errors import DataError, DataNotFoundError, require_dir, require_file
from data.transforms import normalize

log = logging.getLogger(__name__)

# split: (folder, image folder, pair list) under root
SPLITS = {
    "train": ("train_val", "train_val_imgs", "train_pairlist.txt"),
    "val": ("train_val", "train_val_imgs", "val_pairlist.txt"),
    "test": ("test", "test_imgs", "test_pairlist.txt"),
}
FIELDS = "series i j p rank_i rank_j"


def photo_name(series: int, index: int) -> str:
    """File name of photo ``index`` (1-based) of a series: SSSSSS-II.JPG."""
    return f"{series:06d}-{index:02d}.JPG"


@dataclass(frozen=True)
class Pair:
    series: int
    i: int
    j: int
    p: float
    rank_i: int
    rank_j: int

    @property
    def is_tie(self) -> bool:
        return round(self.p * 1000) == 500  # p has three decimals in the official lists


def read_pairlist(path: str | Path) -> list[Pair]:
    """All lines of a pair list (ties included); DataError naming the file and line if malformed."""
    path = require_file(path, f"a Phototriage pair list (lines '{FIELDS}')")
    pairs = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}: line {number}"
            if len(fields) != 6:
                raise DataError(f"{where} has {len(fields)} fields; expected 6 ({FIELDS})")
            try:
                series, i, j = int(fields[0]), int(fields[1]), int(fields[2])
                p, rank_i, rank_j = float(fields[3]), int(fields[4]), int(fields[5])
            except ValueError:
                raise DataError(f"{where}: {line.strip()!r} is not '{FIELDS}' (integers, p a number)") from None
            if not 0.0 <= p <= 1.0:
                raise DataError(f"{where}: p = {fields[3]} is not a fraction in [0, 1]")
            if series < 0 or i < 1 or j < 1 or i == j or min(rank_i, rank_j) < 1:
                raise DataError(
                    f"{where}: series {series}, photos {i} and {j}, ranks {rank_i} and {rank_j}: "
                    "expected two different photo indices >= 1 and ranks >= 1"
                )
            pairs.append(Pair(series, i, j, p, rank_i, rank_j))
    return pairs


class Phototriage(Dataset):
    """The labelled pairs of one split, in pair-list order (see the module docstring).

    Args:
        root: folder holding ``train_val/`` and/or ``test/``.
        split: 'train', 'val' or 'test'.
        transform: applied to each sample dict (e.g. PairEvalTransform).

    Attributes: ``pairs`` (labelled ``Pair``s), ``ties`` (pairs left out, p = 0.5),
    ``image_dir``, ``targets`` (per pair).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"Phototriage split must be one of {tuple(SPLITS)}, got {split!r}")
        self.root = require_dir(root, "the Phototriage folder with train_val/ and test/")
        folder, images, pairlist = SPLITS[split]
        self.image_dir = require_dir(self.root / folder / images, f"the {split} photos SSSSSS-II.JPG")
        self.split, self.transform = split, transform
        every = read_pairlist(self.root / folder / pairlist)
        self.pairs = [p for p in every if not p.is_tie]
        self.ties = len(every) - len(self.pairs)
        self.targets = [0 if p.p > 0.5 else 1 for p in self.pairs]
        log.info(
            "Phototriage %s: %d labelled pairs; left out %d pairs with p = 0.5 (no label)",
            split,
            len(self.pairs),
            self.ties,
        )
        # Checked now, not when a sample is first read: a run must not fail hours in.
        names = dict.fromkeys(photo_name(p.series, k) for p in self.pairs for k in (p.i, p.j))
        missing = [n for n in names if not (self.image_dir / n).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{self.image_dir}: {len(missing)} image file(s) of the {split} pairs missing, "
                f"e.g. {', '.join(missing[:3])}"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, series: int, index: int) -> Tensor:
        with Image.open(self.image_dir / photo_name(series, index)) as img:
            return torch.from_numpy(np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1)))

    def __getitem__(self, k: int) -> dict[str, Any]:
        pair = self.pairs[k]
        sample = {
            "a": self._load(pair.series, pair.i),
            "b": self._load(pair.series, pair.j),
            "series": pair.series,
            "i": pair.i,
            "j": pair.j,
            "p": pair.p,
            "target": self.targets[k],
            "index": k,
        }
        return self.transform(sample) if self.transform is not None else sample


def fix_scale_crop(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) -> (3, size, size): shorter side to ``size`` (the longer one scaled and
    truncated, as the original's FixScaleCrop), bilinear with antialias, centre crop."""
    h, w = image.shape[-2:]
    oh, ow = (size, int(w * size / h)) if w > h else (int(h * size / w), size)
    image = F.resize(image, [oh, ow], antialias=True)
    y, x = round((oh - size) / 2), round((ow - size) / 2)
    return image[..., y : y + size, x : x + size]


class PairEvalTransform:
    """Both photos: shorter side -> size, centre crop, ImageNet normalisation; 'a', 'b' float32 (3, S, S)."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {
            **sample,
            "a": normalize(fix_scale_crop(sample["a"], self.size)),
            "b": normalize(fix_scale_crop(sample["b"], self.size)),
        }


class PairTrainTransform(PairEvalTransform):
    """PairEvalTransform plus, with probability ``flip_p``, a horizontal flip of both photos and,
    with probability ``swap_p``, the pair swapped (a <-> b, i <-> j, p -> 1 - p, target flipped).

    Args:
        size: crop side.
        flip_p: probability of flipping both photos (one draw per pair).
        swap_p: probability of swapping the pair.
    """

    def __init__(self, size: int = 224, flip_p: float = 0.0, swap_p: float = 0.0) -> None:
        super().__init__(size)
        self.flip_p, self.swap_p = flip_p, swap_p

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = super().__call__(sample)
        if self.flip_p and torch.rand(()).item() < self.flip_p:
            out["a"], out["b"] = out["a"].flip(-1), out["b"].flip(-1)
        if self.swap_p and torch.rand(()).item() < self.swap_p:
            out.update(
                a=out["b"], b=out["a"], i=out["j"], j=out["i"], p=round(1.0 - out["p"], 6), target=1 - out["target"]
            )
        return out
