"""Checkpoints: one dict, written atomically, read without executing pickled code.

A checkpoint holds ``model`` (state dict), ``model_config`` (plain types that rebuild the
network alone), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed),
``iteration``, ``batch_in_epoch`` (batches of the current epoch already done: > 0 only for
a checkpoint written on interruption), ``rng``, ``best``, ``schedule_total`` (the learning-rate
schedule's length in iterations, kept on resume unless ``--epochs`` extends the run) and ``args``.
The best-by-validation file (``trainer.best_state``) keeps the model, its config, scores and args only.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, permissions); the previous file under that name is intact."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a
    truncated checkpoint under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is kept" if path.exists() else "no earlier file under that name"
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointWriteError(f"checkpoint {path}: could not write it ({detail}); {kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only.

    A file that carries other pickled objects (code) is refused, not run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {path}: refused, it carries pickled objects other than tensors and plain "
                f"containers (possibly code), which are not loaded ({first})"
            ) from None
        raise CheckpointError(f"checkpoint {path}: corrupt or not a torch checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as e:  # garbage bytes
        detail = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"checkpoint {path}: corrupt or not a torch checkpoint ({detail})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path}: not a training checkpoint of this project (no 'model' entry)")
    return state


def capture_rng() -> dict[str, Any]:
    """Every RNG state as tensors and plain types (so weights_only loading accepts it)."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(k) for k in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    # CUDA generators get their saved states back (set, never re-seeded); on a machine with fewer
    # devices than the one that saved them, the devices that exist do (set_rng_state_all would fail).
    if state["cuda"] and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
