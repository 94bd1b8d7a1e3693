"""NYUv2 for the pixel tasks: semantic segmentation + depth (+ surface normals in the MTAN layout).

Two on-disk layouts, detected from the folder contents:

- ``'official'``: the prepared folder written by ``python -m data.prepare_nyuv2`` from the official labeled .mat
  (format in that module's docstring): 40 classes, 480 x 640 frames.
- ``'mtan'``: the widely used MTAN ``nyuv2/`` folder: ``train/`` and ``val/``, each with ``image/ label/ depth/
  normal/`` holding ``0.npy .. N-1.npy``; 13 classes, 288 x 384 frames. MTAN's ``val/`` is the official test set.

Split names:

- ``'train'``, ``'test'``: the official splits, unchanged, in split-file order (MTAN: ``train/`` and ``val/``).
- ``'val'``: a seeded validation subset of ``'train'`` for model selection: ``round(val_fraction * n_train)``
  frames (at least one), the first ones of ``np.random.default_rng(val_seed).permutation(n_train)``, sorted back
  to file order (defaults: 10 %, seed 0).
- ``'train_noval'``: ``'train'`` minus ``'val'``.

Classes (``seg_classes``): None = the layout's own (official 40, MTAN 13); 40 (official only: the MTAN folder holds
13-class labels and cannot be expanded, a DataError); 13 = the 40 classes mapped with ``labels13`` of
class13Mapping.mat (``CLASS_13_OF_40``: 1 bed, 2 books, 3 ceiling, 4 chair, 5 floor, 6 furniture, 7 objects,
8 picture, 9 sofa, 10 table, 11 tv, 12 wall, 13 window -> seg 0..12 in that order; MTAN's labels are taken to use
the same order, an inference of the design note), unlabeled pixels staying ``IGNORE_INDEX``. ``num_classes`` and
``class_names`` follow.

Samples (``transform=None``) are dicts:

- official: ``'image'`` uint8 (3, 480, 640) RGB, the source frame; ``'seg'`` int64 (480, 640), 0..39 (or 0..12),
  255 = ignore;
  ``'depth'`` float32 (1, 480, 640) metres, 0 = invalid; ``'index'`` int, the 1-based NYU frame index.
- mtan: ``'image'`` uint8 (3, 288, 384) = round(255 * image); ``'seg'`` int64 (288, 384), 0..12, 255 = ignore
  (MTAN's -1); ``'depth'`` float32 (1, 288, 384) metres, 0 = invalid; ``'normal'`` float32 (3, 288, 384), all-zero =
  invalid; ``'index'`` int, the file number.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.errors import DataError, require_dir
from data.labels import IGNORE_INDEX
from data.nyuv2_tables import CLASS_13_OF_40, CLASS_NAMES_13, FORMAT, FORMAT_VERSION

SPLITS = ("train", "test", "val", "train_noval")
LAYOUTS = (
    "a prepared folder from `python -m data.prepare_nyuv2` (meta.json, train/, test/) "
    "or an MTAN nyuv2/ folder (train/ and val/ with image/ label/ depth/ normal/)"
)
_OFFICIAL_FILES = ("image.npy", "seg.npy", "depth.npy", "index.npy")
_MTAN_PARTS = ("image", "label", "depth", "normal")
SEG_CLASSES = (None, 40, 13)


def class13_lut() -> np.ndarray:
    """(256,) int64 lookup table from the 40-class seg 0..39 to the 13-class seg 0..12 (``IGNORE_INDEX`` elsewhere)."""
    lut = np.full(256, IGNORE_INDEX, np.int64)
    lut[: len(CLASS_13_OF_40)] = CLASS_13_OF_40.astype(np.int64) - 1
    return lut


def carve_val(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (rest, val), both sorted; val = the first round(val_fraction * n) of a seeded
    permutation."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    # At least one frame when asked for any, so that tiny sets still select on something.
    n_val = max(round(val_fraction * n), 1 if val_fraction > 0 and n > 1 else 0)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def detect_layout(root: Path) -> str:
    """'official' or 'mtan' from the contents of `root`; DataError listing the accepted layouts otherwise."""
    if (root / "meta.json").is_file():
        return "official"
    if any((root / part / "image").is_dir() for part in ("train", "val")):
        return "mtan"
    raise DataError(f"{root}: unknown NYUv2 layout; expected {LAYOUTS}")


def _mtan_count(folder: Path) -> int:
    """Number of samples in an MTAN split folder, checking that every part holds exactly 0.npy .. N-1.npy."""
    require_dir(folder, f"an MTAN split folder with {', '.join(_MTAN_PARTS)}")
    expected = None
    for part in _MTAN_PARTS:
        names = {p.name for p in require_dir(folder / part, "MTAN .npy files").glob("*.npy")}
        if expected is None:
            expected = {f"{i}.npy" for i in range(len(names))}
        missing = sorted(expected - names, key=lambda name: int(name.split(".")[0]))
        if missing or len(names) != len(expected):
            shown = ", ".join(missing[:3]) or "unexpected extra files"
            raise DataError(f"{folder / part}: expected files 0.npy .. {len(expected) - 1}.npy; missing {shown}")
    return len(expected)


def _read_meta(root: Path) -> dict[str, Any]:
    """Parse and check meta.json of a prepared folder."""
    path = root / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err}); re-run python -m data.prepare_nyuv2") from err
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; expected {FORMAT!r} version "
            f"{FORMAT_VERSION} (re-run python -m data.prepare_nyuv2)"
        )
    return meta


class NYUv2(Dataset):
    """NYUv2 frames from a prepared official folder or an MTAN folder (see the module docstring).

    Attributes: ``layout`` ('official' | 'mtan'), ``tasks`` (the targets its samples hold: seg, depth, and normal in
    the MTAN layout), ``num_classes`` (40 | 13), ``ignore_index`` (255),
    ``class_names``, ``indices`` (NYU index or MTAN file number of every sample, in order).
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        seg_classes: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if seg_classes not in SEG_CLASSES:
            raise ValueError(f"seg_classes must be None, 40 or 13, got {seg_classes!r}")
        self.root = require_dir(root, LAYOUTS)
        self.split = split
        self.transform = transform
        self.layout = detect_layout(self.root)
        # the official .mat has no normals; the MTAN folder has Eigen & Fergus' precomputed ones
        self.tasks: tuple[str, ...] = ("seg", "depth", "normal") if self.layout == "mtan" else ("seg", "depth")
        source = "test" if split == "test" else "train"
        if self.layout == "official":
            meta = _read_meta(self.root)
            self.folder = self.root / source
            for name in _OFFICIAL_FILES:
                if not (self.folder / name).is_file():
                    raise DataError(f"{self.folder / name}: missing; re-run python -m data.prepare_nyuv2")
            numbers = np.load(self.folder / "index.npy")
            self.num_classes: int = meta["num_classes"]
            self.class_names: list[str] = meta["class_names"]
            if seg_classes is not None and self.num_classes != 40:
                raise DataError(f"{self.root / 'meta.json'}: {self.num_classes} classes; expected 40 to map them")
        else:
            if seg_classes == 40:
                raise DataError(f"{self.root}: an MTAN folder holds 13-class labels only; use seg_classes=13 or None")
            self.folder = self.root / ("val" if source == "test" else "train")  # MTAN's val/ is the official test
            numbers = np.arange(_mtan_count(self.folder))
            self.num_classes = len(CLASS_NAMES_13)
            self.class_names = list(CLASS_NAMES_13)
        # the official folder's 40 classes -> 13 through labels13; None / same count: labels as stored
        self._lut = class13_lut() if self.layout == "official" and seg_classes == 13 else None
        if self._lut is not None:
            self.num_classes, self.class_names = len(CLASS_NAMES_13), list(CLASS_NAMES_13)
        positions = np.arange(len(numbers))
        if split in ("val", "train_noval"):
            rest, val = carve_val(len(numbers), val_fraction, val_seed)
            positions = val if split == "val" else rest
        self._positions = positions
        self.indices: list[int] = numbers[positions].tolist()
        self._arrays: dict[str, np.ndarray] | None = None  # memory maps, opened lazily in each worker

    def __len__(self) -> int:
        return len(self._positions)

    def __getstate__(self) -> dict[str, Any]:
        # a pickled np.memmap would copy the whole array into each spawned worker; reopen there instead
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = int(self._positions[i])
        sample = self._official(pos) if self.layout == "official" else self._mtan(pos)
        sample["index"] = self.indices[i]
        return self.transform(sample) if self.transform is not None else sample

    def _official(self, pos: int) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in ("image", "seg", "depth")}
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self._arrays["image"][pos].transpose(2, 0, 1))),
            "seg": torch.from_numpy(self._seg(self._arrays["seg"][pos])),
            "depth": torch.from_numpy(np.array(self._arrays["depth"][pos], dtype=np.float32))[None],
        }

    def _seg(self, seg: np.ndarray) -> np.ndarray:
        """Stored uint8 40-class seg -> int64, mapped to 13 classes when asked."""
        return seg.astype(np.int64) if self._lut is None else self._lut[seg]

    def _mtan(self, pos: int) -> dict[str, Any]:
        image, label, depth, normal = (np.load(self.folder / part / f"{pos}.npy") for part in _MTAN_PARTS)
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        seg = np.rint(label).astype(np.int64)
        seg[seg < 0] = IGNORE_INDEX
        depth = depth.reshape(depth.shape[:2])  # (H, W, 1) or (H, W)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "seg": torch.from_numpy(seg),
            "depth": torch.from_numpy(depth.astype(np.float32))[None],
            "normal": torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1), dtype=np.float32)),
        }
