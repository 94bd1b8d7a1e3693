"""The task families (families/base.py says what a family answers) and the one table of them.

from families import family
fam = family("pixel")            # PixelFamily; a checkpoint's model_config['kind'] picks it
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.checkpoint import CheckpointError, load_checkpoint
from models import build_model, from_pretrained, model_from_config
from models.pretrained import CONFIG_NAME, PretrainedError, is_url, read_config

from .base import Datasets, Family, Protocol
from .image import ImageFamily
from .pixel import PixelFamily
from .series import SeriesFamily

FAMILIES: dict[str, type[Family]] = {f.kind: f for f in (PixelFamily, ImageFamily, SeriesFamily)}

__all__ = [
    "FAMILIES",
    "Datasets",
    "Family",
    "ImageFamily",
    "PixelFamily",
    "Protocol",
    "SeriesFamily",
    "family",
    "hub_entries",
    "load_model",
    "protocols",
]


def family(kind: str) -> type[Family]:
    """The family of networks of ``kind`` (a checkpoint's 'kind' / model_config['kind'])."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown network kind {kind!r}; known: {', '.join(FAMILIES)}") from None


def protocols() -> dict[str, Protocol]:
    """Every family's reproduce.py protocols by name."""
    return {p.name: p for f in FAMILIES.values() for p in f.protocols}


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    return is_url(path) or (Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file())


def load_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The network (eval mode, CPU) and its info {'model_config', 'preprocessing', 'labels'} (checkpoints also
    'epoch', 'best_metrics') from a training checkpoint (.pth, read without running pickled code) or a
    released-weights folder / URL (python -m tools.export).

    Raises CheckpointError or models.pretrained.PretrainedError naming the file.
    """
    if is_pretrained_dir(path):
        model = from_pretrained(path)
        config = read_config(path)
        cfg = model.config.to_dict()
        fam = family(cfg["kind"])
        data = config.get("data") or {}
        return model, {
            "model_config": cfg,
            "data": data,
            "preprocessing": config.get("preprocessing") or fam.preprocessing(cfg, data),
            "labels": config.get("labels") or fam.labels(cfg, data),
        }
    if Path(path).is_dir():
        raise CheckpointError(
            f"{path}: a folder without {CONFIG_NAME} (expected a checkpoint file or a folder "
            f"written by python -m tools.export)"
        )
    ck = load_checkpoint(path)
    if "model_config" not in ck:
        raise CheckpointError(f"checkpoint {path}: no model_config entry (not written by this project)")
    try:
        model = model_from_config(ck["model_config"])
        fam = family(model.config.kind)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its model_config does not build a network ({e})") from None
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint {path}: weights do not fit its model_config ({detail})") from None
    cfg, data = model.config.to_dict(), ck.get("data") or {}
    return model.eval(), {
        "model_config": cfg,
        "data": data,
        "preprocessing": fam.preprocessing(cfg, data),
        "labels": fam.labels(cfg, data),
        "epoch": ck.get("epoch"),
        "best_metrics": ck.get("best_metrics"),
    }


def hub_entries() -> dict[str, Callable[..., Any]]:
    """torch.hub entry points, one per family (hubconf.py publishes them): ``entry(weights=None,
    map_location='cpu', **options)``. ``weights`` is a released-weights folder or URL; None builds an
    untrained network from ``options`` (build_model's)."""
    entries = {}
    for fam in FAMILIES.values():

        def entry(weights: str | None = None, map_location: str = "cpu", _kind: str = fam.kind, **options: Any) -> Any:
            if weights is None:  # the paper's network of the kind unless options say otherwise
                return build_model(_kind, **options).eval()
            if options:
                raise TypeError(f"options {sorted(options)} apply to weights=None only; the released config fixes them")
            found = read_config(weights)["model_config"]["kind"]
            if found != _kind:
                raise PretrainedError(f"{weights}: holds a {found} network; use {FAMILIES[found].hub_entry}")
            return from_pretrained(weights, map_location)

        entry.__name__ = entry.__qualname__ = fam.hub_entry
        entry.__doc__ = fam.hub_doc
        entries[fam.hub_entry] = entry
    return entries
