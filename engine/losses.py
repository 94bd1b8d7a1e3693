"""Task losses: cross-entropy for classes, berHu / L1 / MSE on valid depth pixels, cosine or L1 on valid
surface normals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from data.labels import IGNORE_INDEX

DEPTH_LOSSES = ("berhu", "l1", "mse")
NORMAL_LOSSES = ("cos", "l1")


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


def normal_loss(pred: Tensor, target: Tensor, name: str = "cos") -> Tensor:
    """Mean loss over pixels with a normal (target vector not all zero); pred (unit vectors, as the network
    gives them) and target (B, 3, H, W).

    cos: 1 - cosine similarity (MTAN, LibMTL, Nash-MTL); l1: the L1 distance summed over the three
    components (Auto-Lambda, Vandenhende et al.). A batch without valid pixels gives 0.
    """
    valid = torch.linalg.vector_norm(target, dim=1) > 0  # (B, H, W)
    n = valid.sum().clamp_min(1)
    pred = pred.float()
    if name == "l1":
        per_pixel = (pred - target).abs().sum(dim=1)
    else:
        per_pixel = 1 - F.cosine_similarity(pred, target, dim=1, eps=1e-12)
    return torch.where(valid, per_pixel, 0.0).sum() / n


def pixel_losses(
    out: dict[str, Tensor], batch: dict[str, Tensor], depth_name: str = "berhu", normal_name: str = "cos"
) -> dict[str, Tensor]:
    """The loss of every pixel task the network predicts: 'seg' CE (ignoring IGNORE_INDEX), 'depth'
    depth_loss (also disparity), 'normal' normal_loss."""
    losses = {
        "seg": lambda: F.cross_entropy(out["seg"].float(), batch["seg"], ignore_index=IGNORE_INDEX),
        "depth": lambda: depth_loss(out["depth"], batch["depth"], depth_name),
        "normal": lambda: normal_loss(out["normal"], batch["normal"], normal_name),
    }
    return {t: losses[t]() for t in out}


def image_losses(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {t: F.cross_entropy(out[t].float(), batch[t]) for t in ("gender", "age")}
