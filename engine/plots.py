"""Matplotlib figures: training curves from log.jsonl, a qualitative grid, the age confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .logger import read_log  # noqa: E402
from .metrics import DIRECTION  # noqa: E402


def _higher_is_better(key: str) -> bool:
    """'val/<metric>' by the one table of metric directions (the selection score is higher-better)."""
    return DIRECTION.get(key.split("/", 1)[1], 1) > 0


def curve_panels(keys: list[str]) -> list[tuple[str, list[str], bool]]:
    """(title, log keys, log y-axis) per panel of plot_curves, empty panels left out."""
    val_keys = [k for k in keys if k.startswith("val/")]
    panels = [
        ("training loss", [k for k in keys if k.startswith("train/loss/")], False),
        ("loss weights", [k for k in keys if k.startswith("train/weight/")], False),
        ("validation (higher is better)", [k for k in val_keys if _higher_is_better(k)], False),
        ("validation errors (lower is better)", [k for k in val_keys if not _higher_is_better(k)], True),
    ]
    return [p for p in panels if p[1]]


def plot_curves(log_path: str | Path, out: str | Path) -> Path:
    """Per epoch: training losses; validation metrics where higher is better (accuracies, IoUs, depth
    thresholds, the selection score: all in [0, 1]); validation errors where lower is better (depth
    errors, on a log axis so that one bad epoch does not flatten the others). Empty panels are left out."""
    records = read_log(log_path)
    epochs = [r["epoch"] for r in records]
    panels = curve_panels(list(records[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, keys, log_scale) in zip(axes[0], panels):
        for k in keys:
            values = [np.nan if r.get(k) is None else r[k] for r in records]
            ax.plot(epochs, values, marker="o", label=k.split("/", 1)[1])
        ax.set(title=title, xlabel="epoch")
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_grid(
    rows: list[np.ndarray],
    out: str | Path,
    titles: tuple[str, ...] = ("input", "seg truth", "seg prediction", "depth truth", "depth prediction"),
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
