"""Checkpoints: one dict, written atomically, read without executing pickled code.

``LAYOUT`` below is the one statement of what a checkpoint holds: every entry, and which of the two
files a run writes carries it (the resumable ``*_last.pth`` and the best-by-validation ``*_best.pth``).
``resumable_state`` and ``best_state`` build the two dicts from it and refuse anything else;
``python -m engine.checkpoint CKPT`` prints a file's entries with these descriptions.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# entry -> (files that hold it, what it is). "last": the resumable file (--out); "best": the
# best-by-validation file beside it (model only: for eval.py, predict.py, export and --init).
LAYOUT: dict[str, tuple[tuple[str, ...], str]] = {
    "model": (("last", "best"), "the network's state dict"),
    "model_config": (("last", "best"), "plain types that rebuild the network alone (models.model_from_config)"),
    "kind": (("last", "best"), "the task family: pixel, image or series"),
    "data": (("last", "best"), "what it was trained on: dataset, frame size, label names (predict.py, export)"),
    "args": (("last", "best"), "every training setting under its argparse name"),
    "optimizer": (("last",), "the optimiser's state dict (momentum buffers, parameter groups)"),
    "scheduler": (("last",), "the learning-rate schedule's state (its iteration)"),
    "scaler": (("last",), "the fp16 gradient scaler's state, or None"),
    "weighting": (("last",), "the loss weighting's state (engine/weighting.py: loss history, learned weights)"),
    "train_state": (
        ("last",),
        "where training stands (engine.train.TrainState: epoch, iteration, position "
        "in the epoch, best score, running loss sums, schedule length)",
    ),
    "rng": (("last",), "every random generator's state (Python, NumPy, torch, CUDA)"),
    "epoch": (("best",), "epochs completed when this model was the best"),
    "iteration": (("best",), "iterations completed when this model was the best"),
    "best": (("best",), "its validation score (the family's model-selection score)"),
    "best_metrics": (("best",), "its validation metrics"),
}


def _keys(file: str) -> list[str]:
    return [k for k, (files, _) in LAYOUT.items() if file in files]


def resumable_state(**entries: Any) -> dict[str, Any]:
    """The resumable checkpoint: exactly the LAYOUT entries of the 'last' file."""
    return _checked(entries, "last")


def best_state(last: dict[str, Any]) -> dict[str, Any]:
    """The best-by-validation file from a resumable state: the model, how to rebuild it and its
    scores, without optimiser and RNG state (about half the size; ``--resume`` refuses it)."""
    train = last["train_state"]
    return _checked(
        {
            **{k: last[k] for k in _keys("best") if k in last},
            **{k: train[k] for k in ("epoch", "iteration", "best", "best_metrics")},
        },
        "best",
    )


def _checked(entries: dict[str, Any], file: str) -> dict[str, Any]:
    wanted = _keys(file)
    if set(entries) != set(wanted):
        raise KeyError(f"a {file!r} checkpoint holds {wanted}; got {sorted(entries)}")
    return {k: entries[k] for k in wanted}


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
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
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


def describe(path: str | os.PathLike) -> str:
    """One line per entry of a checkpoint file: its name, a short summary of the value, and LAYOUT's text."""
    ck = load_checkpoint(path)
    lines = [f"{path}: {'resumable' if 'optimizer' in ck else 'best-by-validation (model only)'} checkpoint"]
    for key, value in ck.items():
        if isinstance(value, dict) and key in ("model", "optimizer", "weighting"):
            summary = f"{len(value)} entries"
        elif isinstance(value, (dict, list)):
            summary = (repr(value)[:60] + "...") if len(repr(value)) > 63 else repr(value)
        else:
            summary = repr(value)
        lines.append(f"  {key:<13} {summary:<64} {LAYOUT.get(key, ((), 'not in LAYOUT'))[1]}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Print the entries of a checkpoint with what each one is (LAYOUT)")
    p.add_argument("checkpoint", help="a *_last.pth or *_best.pth file")
    return p


if __name__ == "__main__":
    import sys

    args = get_args_parser().parse_args()
    try:
        print(describe(args.checkpoint))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
