"""Task losses: cross-entropy for classes, berHu / L1 / MSE on valid depth pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from data.labels import IGNORE_INDEX

DEPTH_LOSSES = ("berhu", "l1", "mse")


def depth_loss(pred: Tensor, target: Tensor, name: str = "berhu") -> Tensor:
    """Mean loss over pixels with ground truth (target > 0); pred, target (B, 1, H, W).

    berHu: |e| where |e| <= c, (e^2 + c^2) / (2c) above, with c = 0.2 * max |e| over the
    batch's valid pixels (treated as a constant, as in Laina et al. 2016).
    """
    # Masking with where() instead of boolean indexing keeps shapes static: no host-device sync
    # per step on GPU. A batch without valid pixels gives 0 (n is clamped to 1).
    valid = target > 0
    n = valid.sum().clamp_min(1)
    err = torch.where(valid, pred.float() - target, 0.0)
    if name == "l1":
        return err.abs().sum() / n
    if name == "mse":
        return err.square().sum() / n
    a = err.abs()
    c = (0.2 * a.max()).detach().clamp_min(1e-6)
    return torch.where(valid & (a > c), (a.square() + c * c) / (2 * c), a).sum() / n


def pixel_losses(out: dict[str, Tensor], batch: dict[str, Tensor], depth_kind: str = "berhu") -> dict[str, Tensor]:
    """{'seg': CE (ignoring IGNORE_INDEX), 'depth': depth_loss} for the pixel nets."""
    return {
        "seg": F.cross_entropy(out["seg"].float(), batch["seg"], ignore_index=IGNORE_INDEX),
        "depth": depth_loss(out["depth"], batch["depth"], depth_kind),
    }


def image_losses(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {t: F.cross_entropy(out[t].float(), batch[t]) for t in ("gender", "age")}
