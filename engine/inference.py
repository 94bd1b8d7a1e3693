"""Inference on users' own files: the network from a checkpoint or a released-weights folder,
its preprocessing and label names, and images read the way people have them.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from data.adience import AGE_GROUPS, GENDERS
from data.nyuv2_tables import CLASS_NAMES_13, CLASS_NAMES_40
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from models import MultiTaskNet, model_from_config
from models.pretrained import CONFIG_NAME, from_pretrained, is_url, read_config

from .checkpoint import CheckpointError, load_checkpoint

# Suffixes taken from input folders (a file named on the command line is tried whatever its suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImage(Exception):
    """A file that cannot be decoded as an image; the message names the file and the reason."""


def task_labels(model_config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Class names per classification task, for the tasks whose class count matches a known table
    (NYUv2 40 / 13 classes, Adience genders and age groups); other tasks get 'class_<k>'."""
    known = {"seg": (CLASS_NAMES_40, CLASS_NAMES_13), "gender": (GENDERS,), "age": (AGE_GROUPS,)}
    labels: dict[str, list[str]] = {}
    for task, channels in model_config.get("tasks", {}).items():  # series nets: one 'pair' output, no table
        if task == "depth":  # a regression output in metres, no classes
            continue
        tables = [t for t in known.get(task, ()) if len(t) == channels]
        labels[task] = list(tables[0]) if tables else [f"class_{k}" for k in range(channels)]
    return labels


def preprocessing(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What an input goes through before the network, as plain types (written into config.json)."""
    size = int(model_config["input_size"])
    pre: dict[str, Any] = {"input_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                           "scale": "RGB uint8 / 255, then (x - mean) / std"}
    if model_config["kind"] == "series":  # as data.phototriage.PairEvalTransform
        pre["resize_shorter_side"] = size
        pre["center_crop"] = size
    elif model_config["kind"] == "pixel":
        pre["windows"] = (f"the full image is covered by {size} x {size} windows (stride {2 * size // 3}) and "
                          "every output is averaged over the windows covering a pixel (data/transforms.py)")
    else:
        # the 256 -> 224 ratio of the usual protocol, as in eval.py and engine.tasks.image_datasets
        pre["resize_shorter_side"] = round(size * 256 / 224)
        pre["center_crop"] = size
    return pre


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    return is_url(path) or (Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file())


def load_model(path: str | os.PathLike) -> tuple[MultiTaskNet, dict[str, Any]]:
    """The network (eval mode, CPU) and its info {'model_config', 'preprocessing', 'labels'} (checkpoints
    also 'epoch', 'best_metrics') from a training checkpoint (.pth, read without running pickled code) or a
    released-weights folder / URL.

    Raises CheckpointError or models.pretrained.PretrainedError naming the file.
    """
    if is_pretrained_dir(path):
        model = from_pretrained(path)
        config = read_config(path)
        cfg = model.config.to_dict()
        return model, {"model_config": cfg, "preprocessing": config.get("preprocessing") or preprocessing(cfg),
                       "labels": config.get("labels") or task_labels(cfg)}
    if Path(path).is_dir():
        raise CheckpointError(f"{path}: a folder without {CONFIG_NAME} (expected a checkpoint file or a folder "
                              f"written by python -m tools.export)")
    ck = load_checkpoint(path)
    if "model_config" not in ck:
        raise CheckpointError(f"checkpoint {path}: no model_config entry (not written by this project)")
    model = model_from_config(ck["model_config"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint {path}: weights do not fit its model_config ({detail})") from None
    cfg = model.config.to_dict()
    return model.eval(), {"model_config": cfg, "preprocessing": preprocessing(cfg), "labels": task_labels(cfg),
                          "epoch": ck.get("epoch"), "best_metrics": ck.get("best_metrics")}


def find_inputs(inputs: list[str]) -> list[Path]:
    """Files named on the command line (any suffix) and the image files under named folders (recursively,
    sorted, hidden files skipped), in the order given, each once. A path that does not exist is kept:
    it is reported as unreadable with the other failures."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
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
