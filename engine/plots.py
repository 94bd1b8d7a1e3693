"""Matplotlib figures: training curves from log.jsonl, a qualitative grid, the age confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .logger import read_log  # noqa: E402


def plot_curves(log_path: str | Path, out: str | Path) -> Path:
    """Training losses and validation metrics per epoch, one panel each."""
    records = read_log(log_path)
    train_keys = [k for k in records[0] if k.startswith("train/")]
    val_keys = [k for k in records[0] if k.startswith("val/")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    epochs = [r["epoch"] for r in records]
    for k in train_keys:
        axes[0].plot(epochs, [r[k] for r in records], marker="o", label=k[len("train/"):])
    axes[0].set(title="training loss", xlabel="epoch")
    for k in val_keys:
        axes[1].plot(epochs, [np.nan if r[k] is None else r[k] for r in records], marker="o", label=k[len("val/"):])
    axes[1].set(title="validation", xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_grid(rows: list[np.ndarray], out: str | Path,
              titles: tuple[str, ...] = ("input", "seg truth", "seg prediction", "depth truth", "depth prediction")
              ) -> Path:
    """rows: panels (H, len(titles) * W, 3) in [0, 1], stacked vertically with column titles."""
    grid = np.concatenate(rows, axis=0)
    fig, ax = plt.subplots(figsize=(2.6 * len(titles), 2.0 * len(rows) + 0.6))
    ax.imshow(grid)
    width = grid.shape[1] / len(titles)
    ax.set_xticks([width * (i + 0.5) for i in range(len(titles))], titles)
    ax.set_yticks([])
    return _save(fig, out)


def plot_confusion(matrix: np.ndarray, labels: list[str], out: str | Path, title: str = "age confusion") -> Path:
    """Rows: true class, columns: predicted class; cells show counts, colour the row share."""
    rows = matrix.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
