"""Task losses: cross-entropy for classes, berHu / L1 / MSE on valid depth pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEPTH_LOSSES = ("berhu", "l1", "mse")


def depth_loss(pred: Tensor, target: Tensor, kind: str = "berhu") -> Tensor:
    """Mean loss over pixels with ground truth (target > 0); pred, target (B, 1, H, W).

    berHu: |e| where |e| <= c, (e^2 + c^2) / (2c) above, with c = 0.2 * max |e| over the
    batch's valid pixels (treated as a constant, as in Laina et al. 2016).
    """
    valid = target > 0
    err = (pred.float() - target)[valid]
    if err.numel() == 0:  # no valid pixel in the batch: a zero that keeps the graph
        return pred.sum() * 0.0
    if kind == "l1":
        return err.abs().mean()
    if kind == "mse":
        return err.square().mean()
    a = err.abs()
    c = (0.2 * a.max()).detach().clamp_min(1e-6)
    return torch.where(a <= c, a, (a.square() + c * c) / (2 * c)).mean()


def pixel_losses(out: dict[str, Tensor], batch: dict[str, Tensor], depth_kind: str = "berhu") -> dict[str, Tensor]:
    """{'seg': CE (ignore 255), 'depth': depth_loss} for the pixel nets."""
    return {
        "seg": F.cross_entropy(out["seg"].float(), batch["seg"], ignore_index=255),
        "depth": depth_loss(out["depth"], batch["depth"], depth_kind),
    }


def image_losses(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {t: F.cross_entropy(out[t].float(), batch[t]) for t in ("gender", "age")}
