"""Metrics pooled over a whole split (sums over pixels / images, then ratios), reducible
across ranks by summing their state tensors.

Segmentation (from the confusion matrix, pixels with label 255 ignored):
pixel accuracy, mean class accuracy and mean IoU over classes whose denominator is not
empty (the reference's definition), frequency-weighted IoU.
Depth (on pixels with ground truth > 0; predictions clamped to >= MIN_DEPTH so that the
ratios and logarithms are defined): abs error, abs rel, sq rel, log10, RMSE, RMSE(log),
and the fractions with max(pred/gt, gt/pred) below 1.25, 1.25^2, 1.25^3 (Cityscapes' 'depth' task
is disparity by default: the same metrics on disparity values).
Surface normals (on pixels whose true vector is not all zero, the norm test of Vandenhende et al.:
MTAN, LibMTL and Nash-MTL test the component sum, which drops valid vectors whose components sum
to 0): the angle between prediction and truth in degrees, pooled over every valid pixel of the
split (LibMTL's convention; MTAN and Nash-MTL average per batch of two, which changes the median):
mean, median, RMSE, and the fractions within 11.25, 22.5 and 30 degrees.
Image tasks: gender accuracy, age accuracy, age 1-off accuracy (within one group).
Series photo selection: see SeriesMeter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from data.labels import IGNORE_INDEX

from .distributed import all_reduce_sum

MIN_DEPTH = 1e-3

# Direction of each reported metric: +1 higher is better, -1 lower is better.
DIRECTION = {
    "seg/miou": 1,
    "seg/pixel_acc": 1,
    "seg/mean_class_acc": 1,
    "seg/fwiou": 1,
    "depth/abs_err": -1,
    "depth/rel_err": -1,
    "depth/sq_rel": -1,
    "depth/log10": -1,
    "depth/rmse": -1,
    "depth/rmse_log": -1,
    "depth/delta1": 1,
    "depth/delta2": 1,
    "depth/delta3": 1,
    "normal/mean": -1,
    "normal/median": -1,
    "normal/rmse": -1,
    "normal/a11": 1,
    "normal/a22": 1,
    "normal/a30": 1,
    "gender/acc": 1,
    "age/acc": 1,
    "age/one_off": 1,
    "pair/acc": 1,
    "pair/acc_agree": 1,
    "pair/nll": -1,
    "series/top1": 1,
}


class SegMeter:
    """Segmentation: a confusion matrix accumulated on the device (no host syncs)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, true: Tensor) -> None:
        """pred, true: (B, H, W) class ids (IGNORE_INDEX in true = no label)."""
        n = self.num_classes
        keep = true != IGNORE_INDEX
        idx = true[keep].long() * n + pred[keep].long()
        self.confusion += torch.bincount(idx, minlength=n * n).view(n, n)

    def reduce(self) -> None:
        all_reduce_sum(self.confusion)

    def class_iou(self) -> list[float]:
        """IoU of every class from the confusion matrix (NaN where the union is empty); seg/miou
        is the mean of the finite entries."""
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(1) + cm.sum(0) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), math.nan).tolist()

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double().cpu()
        tp, gt_count, pred_count = cm.diag(), cm.sum(1), cm.sum(0)
        union = gt_count + pred_count - tp
        total = cm.sum()
        present = union > 0
        iou = tp[present] / union[present]
        has_gt = gt_count > 0
        return {
            "seg/miou": iou.mean().item() if present.any() else math.nan,
            "seg/pixel_acc": (tp.sum() / total).item() if total > 0 else math.nan,
            "seg/mean_class_acc": (tp[has_gt] / gt_count[has_gt]).mean().item() if has_gt.any() else math.nan,
            "seg/fwiou": ((gt_count[present] / total) * iou).sum().item() if total > 0 else math.nan,
        }


class DepthMeter:
    """Depth (or disparity) error sums on the device (no host syncs)."""

    SUMS = ("abs_err", "rel_err", "sq_rel", "log10", "sq_err", "sq_log", "delta1", "delta2", "delta3", "count")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, true: Tensor) -> None:
        """pred, true: (B, H, W); true 0 = no ground truth."""
        valid = true > 0
        gt = true[valid].double()
        pred = pred[valid].double().clamp_min(MIN_DEPTH)
        err = pred - gt
        ratio = torch.maximum(pred / gt, gt / pred)
        log_err = torch.log(pred) - torch.log(gt)
        self.sums += torch.stack(
            [
                err.abs().sum(),
                (err.abs() / gt).sum(),
                (err.square() / gt).sum(),
                (torch.log10(pred) - torch.log10(gt)).abs().sum(),
                err.square().sum(),
                log_err.square().sum(),
                (ratio < 1.25).sum(),
                (ratio < 1.25**2).sum(),
                (ratio < 1.25**3).sum(),
                torch.tensor(float(gt.numel()), dtype=torch.float64, device=gt.device),
            ]
        )

    def reduce(self) -> None:
        all_reduce_sum(self.sums)

    def compute(self) -> dict[str, float]:
        s = dict(zip(self.SUMS, self.sums.cpu().tolist()))
        c = s["count"] or math.nan
        return {
            "depth/abs_err": s["abs_err"] / c,
            "depth/rel_err": s["rel_err"] / c,
            "depth/sq_rel": s["sq_rel"] / c,
            "depth/log10": s["log10"] / c,
            "depth/rmse": math.sqrt(s["sq_err"] / c),
            "depth/rmse_log": math.sqrt(s["sq_log"] / c),
            "depth/delta1": s["delta1"] / c,
            "depth/delta2": s["delta2"] / c,
            "depth/delta3": s["delta3"] / c,
        }


def normal_angles(pred: Tensor, true: Tensor) -> Tensor:
    """Angles in degrees, float64, between predicted and true normals (B, 3, H, W) at the valid pixels
    (true vector not all zero); both are normalised first, so only directions count."""
    valid = torch.linalg.vector_norm(true, dim=1) > 0
    p = pred.double().permute(0, 2, 3, 1)[valid]  # (n, 3)
    t = true.double().permute(0, 2, 3, 1)[valid]
    cos = (p * t).sum(1) / (torch.linalg.vector_norm(p, dim=1) * torch.linalg.vector_norm(t, dim=1)).clamp_min(1e-300)
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


class NormalMeter:
    """Surface normal errors pooled over every valid pixel: sums for the mean, RMSE and thresholds, and
    every angle (float32, on the host) for the exact median; ranks gather them in ``reduce``."""

    THRESHOLDS = {"a11": 11.25, "a22": 22.5, "a30": 30.0}

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(2 + len(self.THRESHOLDS) + 1, dtype=torch.float64, device=device)
        self.angles: list[Tensor] = []

    @torch.no_grad()
    def update(self, pred: Tensor, true: Tensor) -> None:
        """pred, true: (B, 3, H, W) normals; a true all-zero vector = no ground truth."""
        angle = normal_angles(pred, true)
        self.sums += torch.stack(
            [
                angle.sum(),
                angle.square().sum(),
                *[(angle < t).sum().double() for t in self.THRESHOLDS.values()],
                torch.tensor(float(angle.numel()), dtype=torch.float64, device=angle.device),
            ]
        )
        self.angles.append(angle.float().cpu())

    def reduce(self) -> None:
        import torch.distributed as dist

        all_reduce_sum(self.sums)
        if dist.is_available() and dist.is_initialized():
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, torch.cat(self.angles) if self.angles else torch.zeros(0))
            self.angles = parts

    def compute(self) -> dict[str, float]:
        total, squares, *within, count = self.sums.cpu().tolist()
        angles = torch.cat(self.angles) if self.angles else torch.zeros(0)
        c = count or math.nan
        # the median of an even count is the mean of the two middle angles (numpy's, as LibMTL's np.median)
        median = angles.double().quantile(0.5).item() if count else math.nan
        return {
            "normal/mean": total / c,
            "normal/median": median,
            "normal/rmse": math.sqrt(squares / c),
            **{f"normal/{k}": w / c for k, w in zip(self.THRESHOLDS, within)},
        }


class ImageMeter:
    """Gender / age counts and the age confusion matrix."""

    def __init__(self, num_ages: int = 8, device: torch.device | str = "cpu") -> None:
        self.num_ages = num_ages
        self.counts = torch.zeros(4, dtype=torch.int64, device=device)  # gender ok, age ok, age 1-off, n
        self.age_confusion = torch.zeros(num_ages, num_ages, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, gender_pred: Tensor, gender_true: Tensor, age_pred: Tensor, age_true: Tensor) -> None:
        self.counts += torch.stack(
            [
                (gender_pred == gender_true).sum(),
                (age_pred == age_true).sum(),
                ((age_pred - age_true).abs() <= 1).sum(),
                torch.tensor(gender_true.numel(), device=gender_true.device),
            ]
        )
        k = self.num_ages
        self.age_confusion += torch.bincount(age_true.long() * k + age_pred.long(), minlength=k * k).view(k, k)

    def reduce(self) -> None:
        all_reduce_sum(self.counts)
        all_reduce_sum(self.age_confusion)

    def compute(self) -> dict[str, float]:
        g, a, one, n = self.counts.cpu().tolist()
        n = n or math.nan
        return {"gender/acc": g / n, "age/acc": a / n, "age/one_off": one / n}


class SeriesMeter:
    """Series photo selection metrics from one row per labelled pair: (series, i, j, p, prob_i),
    p the share of raters preferring photo i, prob_i the predicted probability that it is preferred.

    - ``pair/acc``: share of pairs where the predicted winner (i when prob_i > 0.5) is the one most
      raters preferred (i when p > 0.5);
    - ``pair/acc_agree``: the same on pairs with clear agreement, p >= 0.7 or p <= 0.3;
    - ``pair/nll``: mean cross-entropy against the soft label, -(p log prob_i + (1 - p) log(1 - prob_i)),
      prob_i clamped to [1e-12, 1 - 1e-12];
    - ``series/top1``: share of series whose photo with the most predicted wins is the best photo.
      The best photo has the most wins by the raters' majorities (in the official lists, where
      p > 0.5 exactly when rank_i < rank_j, that is the rank-1 photo, unless it has a tie p = 0.5);
      ties in wins are broken by the summed probabilities (predicted: prob_i; raters: p), then by
      the lower photo index.

    The rows are kept (they are what --save-predictions writes); ``reduce`` gathers them from
    all ranks, so a series split across ranks is still ranked whole.
    """

    EPS = 1e-12

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, float, float]] = []

    def update(self, series: Tensor, i: Tensor, j: Tensor, p: Tensor, prob_i: Tensor) -> None:
        cols = [t.cpu().tolist() for t in (series, i, j)] + [t.double().cpu().tolist() for t in (p, prob_i)]
        self.rows += zip(*cols)

    def reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.rows)
            self.rows = [r for part in parts for r in part]

    def compute(self) -> dict[str, float]:
        return series_metrics(self.rows)


def series_metrics(rows: list[tuple[int, int, int, float, float]]) -> dict[str, float]:
    """The SeriesMeter metrics of rows (series, i, j, p, prob_i); NaN where no row counts."""
    if not rows:
        return dict.fromkeys(("pair/acc", "pair/acc_agree", "pair/nll", "series/top1"), math.nan)
    ok = [(prob > 0.5) == (p > 0.5) for _, _, _, p, prob in rows]
    agree = [c for c, (_, _, _, p, _) in zip(ok, rows) if p >= 0.7 or p <= 0.3]
    eps = SeriesMeter.EPS
    clamped = [min(max(q, eps), 1 - eps) for *_, q in rows]
    nll = [-(r[3] * math.log(q) + (1 - r[3]) * math.log(1 - q)) for r, q in zip(rows, clamped)]
    # per series and photo: [true wins, summed p, predicted wins, summed prob]
    tally: dict[int, dict[int, list[float]]] = {}
    for s, i, j, p, q in rows:
        photos = tally.setdefault(s, {})
        ti, tj = photos.setdefault(i, [0, 0.0, 0, 0.0]), photos.setdefault(j, [0, 0.0, 0, 0.0])
        (ti if p > 0.5 else tj)[0] += 1
        (ti if q > 0.5 else tj)[2] += 1
        ti[1], tj[1], ti[3], tj[3] = ti[1] + p, tj[1] + 1 - p, ti[3] + q, tj[3] + 1 - q

    def best(photos: dict[int, list[float]], k: int) -> int:
        return max(photos, key=lambda x: (photos[x][k], photos[x][k + 1], -x))

    top1 = [best(photos, 2) == best(photos, 0) for photos in tally.values()]
    return {
        "pair/acc": sum(ok) / len(ok),
        "pair/acc_agree": sum(agree) / len(agree) if agree else math.nan,
        "pair/nll": sum(nll) / len(nll),
        "series/top1": sum(top1) / len(top1),
    }


def multitask_delta(metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Multi-task performance delta against a single-task result, per metric 100 * s * (m - b) / b with
    s = +1 where higher is better and -1 where lower is better, over the metrics both results report, and
    two means of them: 'delta/mean' over the metrics (Maninis et al. 2019; the flat mean of the Nash-MTL,
    CAGrad and FAMO tables) and 'delta/mean_task' over the tasks of each task's mean (LibMTL's
    count_improvement, in percent); a metric's task is its name up to the '/'."""
    out = {}
    for k, d in DIRECTION.items():
        if k in metrics and k in baseline and baseline[k] not in (0, None) and not math.isnan(baseline[k]):
            out[f"delta/{k}"] = 100.0 * d * (metrics[k] - baseline[k]) / abs(baseline[k])
    if out:
        by_task: dict[str, list[float]] = {}
        for k, v in out.items():
            by_task.setdefault(k.split("/")[1], []).append(v)
        out["delta/mean"] = sum(out.values()) / len(out)
        out["delta/mean_task"] = sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
    return out
