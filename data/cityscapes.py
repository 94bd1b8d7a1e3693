"""Cityscapes for the two pixel tasks of the multi-task papers: semantic segmentation + disparity (or depth).

Two on-disk layouts, detected from the folder contents:

- ``'official'`` (the ``CITYSCAPES_DATASET`` folder of the official packages)::

      leftImg8bit/{train,val}/<city>/<city>_<seq:06>_<frame:06>_leftImg8bit.png   8-bit RGB, 1024 x 2048
      gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png                        8-bit label ids 0..33
      disparity/{train,val}/<city>/<stem>_disparity.png                          16-bit p, d = (p - 1) / 256
      camera/{train,val}/<city>/<stem>_camera.json    extrinsic.baseline (m), intrinsic.fx (px)

  Files are discovered once at construction, sorted by city then stem; every image must have its label, disparity
  and camera file (the first missing one is named). Official ``val`` (500 frames) is this project's ``'test'`` split,
  as in the multi-task papers; the official test split has no public labels and is not read.
- ``'mtan'`` (the preprocessed MTAN folder, 128 x 256 or 256 x 512)::

      {train,val}/{image,label_7,label_19,depth}/{i}.npy   i = 0..N-1

  image (H, W, 3) float in [0, 1]; label_7 / label_19 (H, W) with -1 = ignore; depth (H, W, 1) = MTAN's "depth",
  which is disparity: the official disparity in pixels at 2048 px width divided by 256 (values 0 .. ~0.5, about
  p / 65536, not rescaled for the downsampling), 0 = invalid. MTAN's ``val/`` is the official val set.

Split names: ``'train'``, ``'test'`` (official val / MTAN ``val/``), ``'val'`` (a seeded share of ``'train'`` for
model selection, ``data.nyuv2.carve_val``: ``round(val_fraction * n_train)`` frames) and ``'train_noval'``.

Segmentation (``seg_classes``): 19 = the official trainIds, 7 = the non-void categories flat, construction, object,
nature, sky, human, vehicle (table and mappings in ``data.cityscapes_labels``); everything else is ``IGNORE_INDEX``.
MTAN's ``label_19`` / ``label_7`` are read as stored (MTAN's own, undocumented 7-class mapping; -1 -> ignore).

Regression target (``target``), always stored under the key ``'depth'`` as float32 (1, H, W), 0 = invalid:

- ``'disparity'`` (default). Official layout: d = (p - 1) / 256 for p > 0 and 0 for p = 0 (p = 1, zero disparity,
  also reads 0 and is therefore invalid); pixels at the stored image width. MTAN layout: the stored values unchanged,
  so that numbers stay comparable with the published MTAN-lineage tables (AbsErr ~ 0.013); they are pixels of
  disparity of an image 2048 / 256 = 8 px wide.
- ``'depth'`` (official layout only): metric depth Z = baseline * fx / d in metres from the frame's camera file, 0
  where d = 0. The camera file's fx is taken to refer to the stored image width (true for the official 2048 px files
  and for ``data.synthetic.write_cityscapes``). Metric depth cannot be recovered from the MTAN layout (no camera,
  values rescaled): asking for it there is a DataError.

For transform authors: ``disparity_width`` is the image width, in pixels, that disparity values refer to (the stored
image width in the official layout, 8 in the MTAN layout). Disparity is inversely proportional to distance and
proportional to image width: ``value * W / disparity_width`` is the disparity in pixels of an image W px wide, and
resampling an image by a factor s along its width multiplies pixel disparities by s. A transform that must keep the
dataset's units (e.g. to report MTAN-comparable numbers) leaves disparity values unchanged when it resizes; one that
wants pixel units at its output width multiplies by ``out_width / disparity_width``. Metric depth (``target='depth'``)
never changes under resizing, like NYUv2 depth.

Samples (``transform=None``): ``'image'`` uint8 (3, H, W) RGB (MTAN: round(255 * image)); ``'seg'`` int64 (H, W),
0..C-1, ``IGNORE_INDEX`` = ignore; ``'depth'`` float32 (1, H, W) (see above); ``'index'`` int, the position in the
source split's file list (official: sorted by city then stem, see ``stems``; MTAN: the file number).
"""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.cityscapes_labels import CATEGORY_NAMES_7, CLASS_NAMES_19, label_lut
from data.errors import DataError, require_dir
from data.labels import IGNORE_INDEX
from data.nyuv2 import carve_val

SPLITS = ("train", "test", "val", "train_noval")
TARGETS = ("disparity", "depth")
SEG_CLASSES = (19, 7)
LAYOUTS = (
    "the official layout (leftImg8bit/ gtFine/ disparity/ camera/) "
    "or an MTAN cityscapes folder (train/ and val/ with image/ label_7/ label_19/ depth/)"
)
MTAN_DISPARITY_WIDTH = 8  # MTAN's values = disparity at 2048 px / 256 = disparity at 8 px width
_STEM = re.compile(r"^(?P<city>[^_/]+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")


def detect_layout(root: Path) -> str:
    """'official' or 'mtan' from the contents of `root`; DataError listing the accepted layouts otherwise."""
    if (root / "leftImg8bit").is_dir():
        return "official"
    if any((root / part / "image").is_dir() for part in ("train", "val")):
        return "mtan"
    raise DataError(f"{root}: unknown Cityscapes layout; expected {LAYOUTS}")


def official_paths(root: Path, split: str, stem: str) -> dict[str, Path]:
    """The four files of frame `stem` ('<city>_<seq>_<frame>') of official split `split` ('train' | 'val')."""
    city = stem.split("_")[0]
    return {
        "image": root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        "label": root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
        "disparity": root / "disparity" / split / city / f"{stem}_disparity.png",
        "camera": root / "camera" / split / city / f"{stem}_camera.json",
    }


def _official_stems(root: Path, split: str) -> list[str]:
    """Stems of every image of official split `split`, sorted by city then stem; checks the companion files."""
    folder = require_dir(root / "leftImg8bit" / split, f"city folders of {split} images")
    stems = []
    for city in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(city.glob("*_leftImg8bit.png")):
            stem = path.name[: -len("_leftImg8bit.png")]
            match = _STEM.match(stem)
            if match is None or match["city"] != city.name:
                raise DataError(f"{path}: unexpected name; expected {city.name}_<seq:06>_<frame:06>_leftImg8bit.png")
            stems.append(stem)
    if not stems:
        raise DataError(f"{folder}: no <city>/*_leftImg8bit.png images; expected {LAYOUTS}")
    for stem in stems:
        for kind, path in official_paths(root, split, stem).items():
            if not path.is_file():
                raise DataError(f"{path}: missing; expected the {kind} file of every {split} image")
    return stems


def _mtan_count(folder: Path, parts: tuple[str, ...]) -> int:
    """Number of samples in an MTAN split folder, checking that every part holds exactly 0.npy .. N-1.npy."""
    require_dir(folder, f"an MTAN cityscapes split folder with {', '.join(parts)}")
    expected = None
    for part in parts:
        names = {p.name for p in require_dir(folder / part, "MTAN .npy files").glob("*.npy")}
        if expected is None:
            expected = {f"{i}.npy" for i in range(len(names))}
        missing = sorted(expected - names, key=lambda name: int(name.split(".")[0]))
        if missing or len(names) != len(expected):
            shown = ", ".join(missing[:3]) or "unexpected extra files"
            raise DataError(f"{folder / part}: expected files 0.npy .. {len(expected) - 1}.npy; missing {shown}")
    if not expected:
        raise DataError(f"{folder / parts[0]}: no .npy files; expected 0.npy .. N-1.npy")
    return len(expected)


def read_png(path: Path, modes: tuple[str, ...], what: str) -> np.ndarray:
    """Pixel array of PNG `path` whose PIL mode is one of `modes`; DataError naming the file otherwise."""
    try:
        with Image.open(path) as img:
            if img.mode not in modes:
                raise DataError(f"{path}: PIL mode {img.mode}; expected {what}")
            return np.array(img)
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err}); expected {what}") from err


def read_camera(path: Path) -> tuple[float, float]:
    """(baseline m, fx px) from an official ``*_camera.json``; DataError naming the file if absent or invalid."""
    what = "a camera JSON with extrinsic.baseline and intrinsic.fx > 0"
    try:
        camera = json.loads(path.read_text())
        baseline, fx = float(camera["extrinsic"]["baseline"]), float(camera["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected {what}") from err
    if not (baseline > 0 and fx > 0):
        raise DataError(f"{path}: baseline {baseline}, fx {fx}; expected {what}")
    return baseline, fx


def decode_disparity(p: np.ndarray) -> np.ndarray:
    """Official 16-bit disparity PNG values -> disparity in pixels, float32: (p - 1) / 256 for p > 0, 0 for p = 0."""
    p = p.astype(np.float32)
    return np.where(p > 0, (p - 1) / 256, 0).astype(np.float32)


class Cityscapes(Dataset):
    """Cityscapes frames from the official layout or an MTAN folder (see the module docstring).

    Attributes: ``layout`` ('official' | 'mtan'), ``tasks`` (seg, depth: the targets its samples hold; 'depth' is
    the ``target``), ``target`` ('disparity' | 'depth'), ``num_classes`` (19 | 7),
    ``class_names``, ``ignore_index``, ``disparity_width`` (see the module docstring), ``indices`` (position of every
    sample in the source split), ``stems`` (official: '<city>_<seq>_<frame>' of every sample; MTAN: file numbers as
    strings).
    """

    ignore_index = IGNORE_INDEX
    tasks = ("seg", "depth")

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        seg_classes: int = 19,
        target: str = "disparity",
        val_fraction: float = 0.1,
        val_seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if seg_classes not in SEG_CLASSES:
            raise ValueError(f"seg_classes must be 19 or 7, got {seg_classes!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.root = require_dir(root, LAYOUTS)
        self.split = split
        self.transform = transform
        self.target = target
        self.num_classes = seg_classes
        self.class_names: list[str] = list(CLASS_NAMES_19 if seg_classes == 19 else CATEGORY_NAMES_7)
        self.layout = detect_layout(self.root)
        self.source = "val" if split == "test" else "train"  # official / MTAN folder read
        if self.layout == "official":
            names = _official_stems(self.root, self.source)
            first = official_paths(self.root, self.source, names[0])["image"]
            try:
                with Image.open(first) as img:
                    self.disparity_width: int = img.width
            except OSError as err:
                raise DataError(f"{first}: unreadable ({err}); expected an 8-bit RGB PNG") from err
            self._lut = label_lut(seg_classes)
        else:
            if target == "depth":
                raise DataError(
                    f"{self.root}: target='depth' needs the official layout; the MTAN folder stores disparity only "
                    f"(use target='disparity')"
                )
            self.folder = self.root / self.source
            self._label_part = f"label_{seg_classes}"
            names = [str(i) for i in range(_mtan_count(self.folder, ("image", self._label_part, "depth")))]
            self.disparity_width = MTAN_DISPARITY_WIDTH
        positions = np.arange(len(names))
        if split in ("val", "train_noval"):
            rest, val = carve_val(len(names), val_fraction, val_seed)
            positions = val if split == "val" else rest
        self._positions = positions
        self.indices: list[int] = positions.tolist()
        self.stems: list[str] = [names[p] for p in positions]

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self._official(i) if self.layout == "official" else self._mtan(i)
        sample["index"] = self.indices[i]
        return self.transform(sample) if self.transform is not None else sample

    def _official(self, i: int) -> dict[str, Any]:
        paths = official_paths(self.root, self.source, self.stems[i])
        image = read_png(paths["image"], ("RGB",), "an 8-bit RGB image")
        height, width = image.shape[:2]
        if width != self.disparity_width:
            raise DataError(
                f"{paths['image']}: width {width}; expected {self.disparity_width} like the first image of the split"
            )
        label = read_png(paths["label"], ("L", "P"), "an 8-bit labelIds map")
        p = read_png(paths["disparity"], ("I;16", "I;16B", "I"), "a 16-bit disparity PNG")
        for kind, array in (("label", label), ("disparity", p)):
            if array.shape != (height, width):
                raise DataError(
                    f"{paths[kind]}: size {array.shape[1]} x {array.shape[0]}; expected {width} x {height} "
                    f"(width x height) like {paths['image'].name}"
                )
        if p.min() < 0 or p.max() > 65535:
            raise DataError(f"{paths['disparity']}: values outside 0..65535; expected a 16-bit disparity PNG")
        value = decode_disparity(p)
        if self.target == "depth":
            baseline, fx = read_camera(paths["camera"])
            value = np.divide(baseline * fx, value, out=np.zeros_like(value), where=value > 0).astype(np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "seg": torch.from_numpy(self._lut[label].astype(np.int64)),
            "depth": torch.from_numpy(value)[None],
        }

    def _mtan(self, i: int) -> dict[str, Any]:
        pos = int(self._positions[i])
        image, label, depth = (
            np.load(self.folder / part / f"{pos}.npy") for part in ("image", self._label_part, "depth")
        )
        if image.ndim != 3 or image.shape[2] != 3 or label.shape != image.shape[:2] or depth.size != label.size:
            raise DataError(
                f"{self.folder}: sample {pos} has image {image.shape}, {self._label_part} {label.shape}, depth "
                f"{depth.shape}; expected (H, W, 3), (H, W) and (H, W, 1)"
            )
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        seg = np.rint(label).astype(np.int64)
        if seg.max() >= self.num_classes or seg.min() < -1:
            path = self.folder / self._label_part / f"{pos}.npy"
            raise DataError(f"{path}: values {seg.min()}..{seg.max()}; expected -1..{self.num_classes - 1}")
        seg[seg < 0] = IGNORE_INDEX
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "seg": torch.from_numpy(seg),
            "depth": torch.from_numpy(depth.reshape(label.shape).astype(np.float32))[None],
        }
