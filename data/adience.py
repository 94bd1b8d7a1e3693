"""Adience faces for the image tasks: gender (2 classes) + age group (8 classes), 5-fold cross-validation.

Layout (the official benchmark files)::

    root/fold_{0..4}_data.txt   TAB-separated, one header line, 12 columns (FOLD_COLUMNS)
    root/aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>      (image_dir='aligned')
    root/faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>     (image_dir='faces')

Label policy (Levi & Hassner): a row is kept only if its age string is exactly one of the 8 groups in AGE_GROUPS
(label 0..7 in that order) and its gender is 'm' (0) or 'f' (1). Other rows (age 'None', bare integers such as
'35', irregular ranges such as '(25, 23)'; gender 'u' or empty) are dropped and counted per reason; a row may fail
both. Protocol: for test fold k train on the other four (``adience_protocol``); model selection uses a
subject-exclusive seeded subset of the training folds (``split_train_val``).

Samples (``transform=None``): ``'image'`` uint8 (3, H, W) RGB as stored, ``'gender'`` int, ``'age'`` int,
``'path'`` str relative to root.
"""

import csv
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.errors import DataError, DataNotFoundError, require_dir, require_file

log = logging.getLogger(__name__)

NUM_FOLDS = 5
FOLD_COLUMNS = (
    "user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy", "tilt_ang",
    "fiducial_yaw_angle", "fiducial_score",
)  # fmt: skip
AGE_GROUPS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)")
GENDERS = ("m", "f")
PATTERNS = {
    "aligned": "{user_id}/landmark_aligned_face.{face_id}.{original_image}",
    "faces": "{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}",
}


def _check_fold(fold: int) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"Adience fold must be an int in 0..{NUM_FOLDS - 1}, got {fold!r}")
    return int(fold)


def adience_protocol(test_fold: int) -> tuple[list[int], int]:
    """5-fold protocol: (training folds = the other four, in order, test fold)."""
    test_fold = _check_fold(test_fold)
    return [k for k in range(NUM_FOLDS) if k != test_fold], test_fold


def read_fold(path: str | Path) -> list[dict[str, str]]:
    """Rows of a fold file as dicts keyed by FOLD_COLUMNS; DataError naming the file if the format differs."""
    path = require_file(path, f"an Adience fold file with the TAB-separated columns {' '.join(FOLD_COLUMNS)}")
    with open(path, newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines or tuple(lines[0]) != FOLD_COLUMNS:
        raise DataError(f"{path}: header is not the 12 TAB-separated columns {' '.join(FOLD_COLUMNS)}")
    for number, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(FOLD_COLUMNS):
            raise DataError(f"{path}: line {number} has {len(fields)} fields; expected {len(FOLD_COLUMNS)}")
    return [dict(zip(FOLD_COLUMNS, fields, strict=True)) for fields in lines[1:]]


class Adience(Dataset):
    """Adience faces of the given folds, in fold-file order (folds in the order given); see the module docstring.

    Attributes: ``targets`` {'gender': [...], 'age': [...]} per sample, ``subjects`` (user_id per sample),
    ``paths`` (relative to root), ``dropped`` {'age': n, 'gender': n} rows dropped per reason,
    ``num_classes`` {'gender': 2, 'age': 8}.
    """

    num_classes: ClassVar[dict[str, int]] = {"gender": len(GENDERS), "age": len(AGE_GROUPS)}

    def __init__(
        self,
        root: str | Path,
        folds: Sequence[int] | int,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        image_dir: str = "aligned",
        pattern: str | None = None,
    ) -> None:
        self.root = require_dir(root, "the Adience folder with fold_{0..4}_data.txt and the image folders")
        self.folds = folds = [_check_fold(k) for k in ([folds] if isinstance(folds, int) else folds)]
        if not folds:
            raise ValueError("Adience needs at least one fold")
        if pattern is None and image_dir not in PATTERNS:
            raise ValueError(f"no default file pattern for image_dir={image_dir!r}; pass pattern=, e.g. {PATTERNS}")
        pattern = PATTERNS[image_dir] if pattern is None else pattern
        try:
            pattern.format(**dict.fromkeys(FOLD_COLUMNS, ""))
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"pattern {pattern!r} may only use the fields {{{'}, {'.join(FOLD_COLUMNS)}}}") from err
        self.transform = transform
        self.paths: list[str] = []
        self.subjects: list[str] = []
        self.targets: dict[str, list[int]] = {"gender": [], "age": []}
        self.dropped = {"age": 0, "gender": 0}
        for fold in folds:
            for row in read_fold(self.root / f"fold_{fold}_data.txt"):
                bad_age, bad_gender = row["age"] not in AGE_GROUPS, row["gender"] not in GENDERS
                self.dropped["age"] += bad_age
                self.dropped["gender"] += bad_gender
                if bad_age or bad_gender:
                    continue
                self.paths.append(f"{image_dir}/{pattern.format(**row)}")
                self.subjects.append(row["user_id"])
                self.targets["gender"].append(GENDERS.index(row["gender"]))
                self.targets["age"].append(AGE_GROUPS.index(row["age"]))
        log.info("Adience folds %s: dropped %d rows whose age is not one of the 8 groups", folds, self.dropped["age"])
        log.info("Adience folds %s: dropped %d rows whose gender is not m or f", folds, self.dropped["gender"])
        missing = [p for p in self.paths if not (self.root / p).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{self.root}: {len(missing)} image file(s) missing, e.g. {', '.join(missing[:3])} "
                f"(image_dir={image_dir!r}, pattern={pattern!r})"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # Pillow rather than torchvision.io: the latter's decoders warn as deprecated from torchvision 0.29 on
        with Image.open(self.root / self.paths[i]) as img:
            image = torch.from_numpy(np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1)))
        sample = {
            "image": image,
            "gender": self.targets["gender"][i],
            "age": self.targets["age"][i],
            "path": self.paths[i],
        }
        return self.transform(sample) if self.transform is not None else sample


class _HasSubjects(Protocol):
    subjects: Sequence[str]


def split_train_val(dataset: _HasSubjects, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Subject-exclusive (train_indices, val_indices), both sorted: subjects in a seeded random order
    (np.random.default_rng(seed)) go to val until it holds at least round(val_fraction * len) samples (at least
    one when val_fraction > 0)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    subjects = list(dict.fromkeys(dataset.subjects))  # first-appearance order, so the result depends on seed only
    order = np.random.default_rng(seed).permutation(len(subjects))
    target = max(round(val_fraction * len(dataset.subjects)), 1 if val_fraction > 0 else 0)
    count = Counter(dataset.subjects)
    val_subjects: set[str] = set()
    size = 0
    for k in order[:-1]:  # at least one subject stays in train
        if size >= target:
            break
        val_subjects.add(subjects[k])
        size += count[subjects[k]]
    train = [i for i, s in enumerate(dataset.subjects) if s not in val_subjects]
    val = [i for i, s in enumerate(dataset.subjects) if s in val_subjects]
    return train, val
