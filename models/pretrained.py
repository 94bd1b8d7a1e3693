"""Released-weights format: a folder (or URL) with ``model.safetensors`` and ``config.json``.

    DIR/model.safetensors   the state dict, as safetensors (tensors only: no pickle, nothing runs on load)
    DIR/config.json         {"format": "afanet-pretrained", "format_version": 1,
                             "model_config": ModelConfig.to_dict(),
                             "preprocessing": {input size, mean, std, ...}, "labels": {task: [names]}, ...}

``save_pretrained`` writes it (``python -m tools.export CKPT DIR`` from a training checkpoint);
``from_pretrained`` rebuilds the network from those two files alone, strictly, in eval mode.
A URL is a folder on a web server: both files are downloaded once into torch.hub's cache
(``torch.hub.get_dir()/afanet/<hash of the URL>/``) and read from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .multitask import MultiTaskNet, model_from_config

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "afanet-pretrained"
FORMAT_VERSION = 1


class PretrainedError(ValueError):
    """A released-weights folder that cannot be used; the message names it."""


def is_url(path: str | os.PathLike) -> bool:
    return str(path).startswith(("http://", "https://", "file://"))


def _fetch(url: str) -> Path:
    """Download DIR/config.json and DIR/model.safetensors under ``url`` into torch.hub's cache (once)."""
    base = url.rstrip("/")
    folder = Path(torch.hub.get_dir()) / "afanet" / hashlib.sha256(base.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():  # download_url_to_file writes a temporary file and renames it
            try:
                torch.hub.download_url_to_file(f"{base}/{name}", str(folder / name), progress=False)
            except OSError as e:  # URLError and HTTPError are OSErrors
                raise PretrainedError(f"{base}/{name}: could not download it ({e})") from None
    return folder


def resolve(path: str | os.PathLike) -> Path:
    """The local folder holding the two files (downloaded first for a URL)."""
    folder = _fetch(str(path)) if is_url(path) else Path(path)
    if not folder.is_dir():
        raise PretrainedError(
            f"{folder}: no such folder (expected {CONFIG_NAME} and {WEIGHTS_NAME} from python -m tools.export)"
        )
    return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a released-weights folder or URL, checked for its format."""
    file = resolve(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise PretrainedError(
            f"{file}: missing (a released-weights folder holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}, see python -m tools.export)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"{file}: not a JSON file ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model_config" not in config:
        raise PretrainedError(f'{file}: not an AFANet config (expected "format": "{FORMAT}" and a model_config)')
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise PretrainedError(
            f"{file}: format version {config['format_version']} is newer than this code "
            f"({FORMAT_VERSION}); update the code"
        )
    return config


def save_pretrained(model: MultiTaskNet, out: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a released-weights folder; ``extra`` entries (preprocessing, labels, source)
    go into config.json beside the model config. Returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views and shared storage: store each tensor as its own contiguous copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / WEIGHTS_NAME, 0o666 & ~umask)  # safetensors writes 0600; a file to publish is readable like any
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        **(extra or {}),
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def from_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MultiTaskNet:
    """The network of a released-weights folder or URL, in eval mode.

    Built from config.json's model_config; every tensor of model.safetensors must match a
    parameter or buffer by name and shape, and none may be missing (strict), else PretrainedError.
    """
    folder = resolve(path)
    config = read_config(folder)
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise PretrainedError(f"{file}: missing")
    try:  # the file first: a foreign file fails before a network is built
        state = load_file(str(file), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise PretrainedError(f"{file}: not a safetensors file ({e})") from None
    try:
        model = model_from_config(config["model_config"])
    except (TypeError, ValueError) as e:
        raise PretrainedError(f"{folder / CONFIG_NAME}: model_config does not build a network ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing / unexpected keys or shapes, listed by torch
        detail = " ".join(str(e).split())
        raise PretrainedError(f"{file}: does not fit the network of {CONFIG_NAME} ({detail})") from None
    return model.to(map_location).eval()
