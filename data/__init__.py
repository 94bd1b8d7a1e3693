"""Datasets, transforms and protocol helpers for NYUv2 and Cityscapes (pixel tasks), Adience (image tasks) and
Phototriage (series).

Command-line tools: ``python -m data.prepare_nyuv2`` (official .mat -> prepared folder) and ``python -m
data.synthetic`` (small synthetic datasets in the official on-disk formats). Public names are imported from their
submodules on first use, so the preparation tool starts without importing torch.
"""

import importlib
from typing import Any

__all__ = [
    "AGE_GROUPS",
    "GENDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Adience",
    "Cityscapes",
    "DataError",
    "DataNotFoundError",
    "ImageEvalTransform",
    "ImageTrainTransform",
    "NYUv2",
    "PairEvalTransform",
    "PairTrainTransform",
    "Phototriage",
    "PixelEvalTransform",
    "PixelTrainTransform",
    "adience_protocol",
    "carve_val",
    "normalize",
    "sliding_window_predict",
    "split_train_val",
]
# the submodule defining each public name (kept equal to __all__, see tests/test_data_nyuv2.py)
_HOME = {
    "AGE_GROUPS": "adience",
    "GENDERS": "adience",
    "Adience": "adience",
    "adience_protocol": "adience",
    "split_train_val": "adience",
    "Cityscapes": "cityscapes",
    "DataError": "errors",
    "DataNotFoundError": "errors",
    "NYUv2": "nyuv2",
    "carve_val": "nyuv2",
    "PairEvalTransform": "phototriage",
    "PairTrainTransform": "phototriage",
    "Phototriage": "phototriage",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "ImageEvalTransform": "transforms",
    "ImageTrainTransform": "transforms",
    "PixelEvalTransform": "transforms",
    "PixelTrainTransform": "transforms",
    "normalize": "transforms",
    "sliding_window_predict": "transforms",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"data.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
