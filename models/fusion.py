"""Fusion modules between task branches, and where they sit in the trunks.

A fusion module maps ``{task: features}`` to ``{task: features}`` at one point of the task
branches' ResNet trunks (after a stage, ``layer3``, or after one block of it, ``layer4.1``). The
methods the AFA paper compares with (notation of ``models/afa.py``: x_u is branch u's map
(B, C, H, W), tasks t, u = 1..N in branch order; the paper has N = 2):

* cross-stitch (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016):
  per channel, y_t = sum_u a_tu x_u with learned (C, 1, 1) vectors initialised to a_tt = 0.9 and
  a_tu = 0.1 / (N - 1), so that each row sums to 1 (0.9 / 0.1 at two tasks, the original
  authors' baseline; Vandenhende et al. put 0.1 on every off-diagonal entry, LibMTL 1 everywhere);
* NDDR (Gao et al., "NDDR-CNN: Layerwise Feature Fusing in Multi-Task CNNs by Neural
  Discriminative Dimensionality Reduction", CVPR 2019): y_t = ReLU(BN_t(W_t [x_1; ..; x_N])),
  W_t a 1x1 convolution N*C -> C initialised to 0.9 I on task t's own block and 0.1 / (N - 1) I
  on every other block;
* AFA (``models/afa.py``), the paper's method.

Every fusion can record, while training, what the paper is about: how much each branch takes
from the other, and the gradient norm each branch receives with and without the fusion (see
:class:`PairFusion`). The records stay on the device; they are read once per epoch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STAGES = ("layer1", "layer2", "layer3", "layer4")
FUSIONS = ("none", "shared", "cross_stitch", "nddr", "afa")
FUSION_INITS = ("reference", "self")

# Default fusion points: cross-stitch and NDDR after every stage (the original AFA authors'
# baselines, and Misra et al. / Gao et al.); AFA after every block of stage 4 ('layer4.*').
DEFAULT_POINTS: dict[str, tuple[str, ...]] = {
    "cross_stitch": STAGES,
    "nddr": STAGES,
    "afa": ("layer4.*",),
}

# Learning-rate multiplier of the fusion parameters (their own optimiser group), per method and kind:
# - afa: the original AFA training (image nets x1000; pixel nets train the AFA layers with the backbone);
# - cross_stitch: x100, Misra et al. and Vandenhende et al.'s survey code (the original AFA authors' pixel
#   baseline used x1, and their image baseline left the units out of the optimiser);
# - nddr: x100, Gao et al. (base lr 1e-3) and Vandenhende et al.
FUSION_LR_MULT: dict[str, dict[str, float]] = {
    "afa": {"image": 1000.0, "pixel": 1.0},
    "cross_stitch": {"image": 100.0, "pixel": 100.0},
    "nddr": {"image": 100.0, "pixel": 100.0},
}

SELF_WEIGHT = 0.9  # cross-stitch / NDDR initial weight of a task's own features (the rest: the other tasks')

_POINT = re.compile(r"(layer[1-4])(?:\.(\d+|\*))?$")


def resolve_points(fusion: str, fusion_at: Sequence[str] | None, depths: Sequence[int]) -> list[tuple[str, int, str]]:
    """The fusion points of a network as (stage, block index, name), in forward order.

    Names are 'layerK' (after the stage's last block), 'layerK.i' (after block i) or 'layerK.*'
    (after every block of the stage). ``fusion_at=None`` takes the method's default points.
    Two names of the same place (``layer4`` and ``layer4.2`` in a 3-block stage) are refused.
    """
    if fusion in ("none", "shared"):
        if fusion_at:
            raise ValueError(
                f"fusion {fusion!r} has no fusion points; fusion_at={list(fusion_at)} needs a fusion "
                f"method (cross_stitch, nddr, afa)"
            )
        return []
    names = list(fusion_at) if fusion_at else list(DEFAULT_POINTS[fusion])
    points: dict[tuple[str, int], str] = {}
    for name in names:
        m = _POINT.match(name)
        if not m:
            raise ValueError(
                f"fusion point {name!r}: expected layer1..layer4, optionally with a block "
                f"('layer4.1') or '*' for every block ('layer4.*')"
            )
        stage, block = m.group(1), m.group(2)
        n = depths[STAGES.index(stage)]
        if block is None:
            found = [(stage, n - 1, stage)]
        elif block == "*":
            found = [(stage, i, f"{stage}.{i}") for i in range(n)]
        else:
            if int(block) >= n:
                raise ValueError(f"fusion point {name!r}: {stage} has {n} blocks (0..{n - 1})")
            found = [(stage, int(block), name)]
        for s, i, point in found:
            if (s, i) in points:
                raise ValueError(f"fusion points {points[(s, i)]!r} and {point!r} name the same place")
            points[(s, i)] = point
    return sorted(((s, i, p) for (s, i), p in points.items()), key=lambda x: (STAGES.index(x[0]), x[1]))


def point_key(name: str) -> str:
    """Module name of a fusion point ('layer4.1' -> 'layer4_1'; module names cannot hold dots)."""
    return name.replace(".", "_")


class TaskFusion(nn.Module):
    """Base of the fusion modules: ``{t: x_t} -> {t: y_t}`` for the tasks in branch order, shapes kept.

    Subclasses implement ``fuse(x_1, .., x_N) -> (y_1, .., y_N)``. With ``monitor`` on (the trainer's
    default), a training forward adds on-device records: for each task the L2 norm of the
    gradient arriving at y_t from above (``grad_out``: what the branch would receive without
    the fusion) and of the gradient leaving to x_t (``grad_in``: what it receives); subclasses
    add their own records from ``fuse`` while ``self._recording`` is set. :meth:`read_stats`
    averages and resets them (one host sync).
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"a fusion joins distinct tasks, got {list(tasks)}")
        self.tasks = tuple(tasks)
        self.monitor = False
        self._recording = False
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def fuse(self, *xs: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        xs = [feats[t] for t in self.tasks]
        recording = self._recording = self.monitor and self.training and torch.is_grad_enabled()
        ys = self.fuse(*xs)
        self._recording = False
        if recording:
            for t, x, y in zip(self.tasks, xs, ys):
                if x.requires_grad:
                    x.register_hook(self._norm_hook(f"grad_in/{t}"))
                if y.requires_grad:
                    y.register_hook(self._norm_hook(f"grad_out/{t}"))
        return dict(zip(self.tasks, ys))

    def _record(self, name: str, value: Tensor) -> None:
        """Adds a detached scalar to an on-device sum (no host sync)."""
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._counts[name] = self._counts.get(name, 0) + 1

    def _norm_hook(self, name: str):
        def hook(grad: Tensor) -> None:
            self._record(name, torch.linalg.vector_norm(grad.float()))

        return hook

    def parameter_stats(self) -> dict[str, Tensor]:
        """Per-epoch summaries of the parameters themselves (subclasses)."""
        return {}

    def read_stats(self) -> dict[str, float]:
        """The records' means since the last call, and parameter summaries; resets the records."""
        values = {k: v / self._counts[k] for k, v in self._sums.items()}
        values.update(self.parameter_stats())
        self._sums, self._counts = {}, {}
        if not values:
            return {}
        keys = list(values)
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
        return dict(zip(keys, stacked))


def other_weight(n: int) -> float:
    """Initial weight of each other task's features: 0.1 / (N - 1), so that a task's weights sum to 1."""
    return (1 - SELF_WEIGHT) / max(n - 1, 1)


class CrossStitch(TaskFusion):
    """Cross-stitch unit: y_t = same_t * x_t + sum_{u != t} other_tu * x_u, per channel.

    Parameters ``same.<t>`` and, for target t and source u, ``other.<t>_from_<u>``, each (C, 1, 1). At two
    tasks a target has one source and the key is ``other.<t>``: the original authors' layout
    (``Cross_k.{A,B}_weight_same`` / ``_diff``), so that two-task checkpoints keep their keys.

    Args:
        tasks: the task names (branch order).
        channels: C of the maps.
    """

    def __init__(self, tasks: Sequence[str], channels: int) -> None:
        super().__init__(tasks)
        # Per task, (C, 1, 1) vectors that broadcast over (B, C, H, W).
        w = other_weight(len(self.tasks))
        self.same = nn.ParameterDict({t: nn.Parameter(torch.full((channels, 1, 1), SELF_WEIGHT)) for t in tasks})
        self.other = nn.ParameterDict(
            {
                self.other_key(t, u): nn.Parameter(torch.full((channels, 1, 1), w))
                for t in tasks
                for u in tasks
                if u != t
            }
        )

    def other_key(self, target: str, source: str) -> str:
        """The ``other`` key of the weights with which ``target`` takes ``source``'s features."""
        return target if len(self.tasks) == 2 else f"{target}_from_{source}"

    def fuse(self, *xs: Tensor) -> tuple[Tensor, ...]:
        out = []
        for t, x in zip(self.tasks, xs):
            y = self.same[t] * x
            for u, xu in zip(self.tasks, xs):
                if u != t:
                    y = y + self.other[self.other_key(t, u)] * xu
            out.append(y)
        return tuple(out)

    def parameter_stats(self) -> dict[str, Tensor]:
        stats = {f"same/{t}": p.mean() for t, p in self.same.items()}
        stats.update(
            {
                f"other/{t}/{u}": self.other[self.other_key(t, u)].mean()
                for t in self.tasks
                for u in self.tasks
                if u != t
            }
        )
        return stats


class NDDR(TaskFusion):
    """NDDR unit: y_t = ReLU(BN_t(W_t [x_1; ..; x_N])), W_t a 1x1 convolution N*C -> C without bias.

    The concatenation is in task order for every task, as in the original AFA authors' baseline;
    task t's own block starts at 0.9 times the identity, every other block at 0.1 / (N - 1).

    Args:
        tasks: the task names (branch order).
        channels: C of the maps.
    """

    def __init__(self, tasks: Sequence[str], channels: int) -> None:
        super().__init__(tasks)
        n = len(self.tasks)
        self.conv = nn.ModuleDict({t: nn.Conv2d(n * channels, channels, 1, bias=False) for t in tasks})
        self.bn = nn.ModuleDict({t: nn.BatchNorm2d(channels) for t in tasks})
        eye = torch.eye(channels)
        with torch.no_grad():
            for k, t in enumerate(self.tasks):
                blocks = [eye * (SELF_WEIGHT if j == k else other_weight(n)) for j in range(n)]
                self.conv[t].weight.copy_(torch.cat(blocks, dim=1)[..., None, None])  # (C, N*C, 1, 1)

    def fuse(self, *xs: Tensor) -> tuple[Tensor, ...]:
        x = torch.cat(xs, dim=1)  # (B, N*C, H, W)
        return tuple(F.relu(self.bn[t](self.conv[t](x))) for t in self.tasks)

    def parameter_stats(self) -> dict[str, Tensor]:
        out = {}
        for k, t in enumerate(self.tasks):
            w = self.conv[t].weight[..., 0, 0]  # (C, N*C)
            c = w.shape[0]
            for j, u in enumerate(self.tasks):
                mean = w[:, j * c : (j + 1) * c].diagonal().mean()  # task u's block, diagonal
                out[f"self/{t}" if j == k else f"other/{t}/{u}"] = mean
        return out
