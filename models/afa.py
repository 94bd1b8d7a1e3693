"""Adaptive Feature Aggregation (AFA) between task branches.

Shen et al., "Deep Adaptive Feature Aggregation in Multi-task Convolutional Neural
Networks", CIKM 2020. An AFA layer takes the feature maps of the task branches at the
same depth, x_1 .. x_N (B, C, H, W), and returns one map per task of the same shape:

    AFA(x_1 .. x_N) = ReLU(SAM(ReLU(CAM(x_1 .. x_N))))

CAM (channel aggregation) and SAM (spatial aggregation) each predict, for every target task t
and source task u, a weight w_tu with a softmax over the sources, and mix the maps:

    y_t = sum_u w_tu * x_u                    (w_tu: (B, C, 1, 1) in CAM, (B, 1, h, w) in SAM)

The paper and the original code have two tasks: a self logit and an other logit per channel
(position), a 2-way softmax, and the same two weights serve both tasks:

    y_1 = w_self * x_1 + w_other * x_2
    y_2 = w_self * x_2 + w_other * x_1

For N tasks (this project's extension) the logits come from maps W_tu of a hidden vector z built
from all N branches. ``relation='tied'`` (the default) has two maps, W_tt = W_self and W_tu = W_other,
at any N: exactly the original layer at N = 2 (same parameters, same arithmetic). ``'pairwise'`` has
a map per ordered pair (N^2), initialised as copies of one self map and one other map, so that it
starts as the tied layer.

Gradient modes (forward values are identical in all of them):

* ``joint``: plain autograd through the layer.
* ``protect``: the reference's default. Each module is computed with the protected tasks' inputs
  detached, and those tasks get a straight-through term,
  y_t = M_t(sg(x_1), ..) + x_t - sg(x_t), so the gradient reaching x_t is dL/dy_t alone (the
  gradient "before fusion"), while the other branches and the module's parameters learn from
  every output. At the original code's latest commit only task 1 (gender; segmentation: the
  task with the smaller gradient magnitude) is protected, which is our default; ``protect_tasks``
  names the shielded branches, e.g. both, as in the original's commits before August 2020.
* ``adaptive``: the variant the reference discusses but never implemented. Per branch the
  pre-fusion gradient dL/dy_t is kept and compared with the fused gradient dL/dx_t; when
  their norms differ by more than a factor ``tau`` the pre-fusion gradient is returned,
  otherwise the fused one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fusion import TaskFusion

GRAD_MODES = ("joint", "protect", "adaptive")
RELATIONS = ("tied", "pairwise")

# fusion_init='self': the learned self logit starts log(9) above the other one, so that a layer
# first passes 0.9 of a branch's own features and 0.1 of the other's (cross-stitch's start).
SELF_PRIOR = math.log(9.0)

# tau = 2: the fused gradient of a branch is its own gradient re-weighted by softmax weights
# that sum to one plus the other tasks' share, so with balanced tasks the two norms stay
# within a factor of about two; a larger ratio means the other tasks dominate (or cancel)
# the branch's gradient, which is the case the mechanism exists for.
DEFAULT_TAU = 2.0

Weights = list[list[Tensor]]  # W[t][u]: the weight of source u in target t's output


def _add_self_prior(module: nn.Module, enabled: bool) -> None:
    """fusion_init='self': a learned scalar added to the self logits, starting at SELF_PRIOR.
    Absent otherwise, so the default layers hold exactly the reference's parameters."""
    module.self_prior = nn.Parameter(torch.tensor(SELF_PRIOR)) if enabled else None


def _biased(module: nn.Module, self_logits: Tensor) -> Tensor:
    return self_logits if module.self_prior is None else self_logits + module.self_prior


def mix(xs: Sequence[Tensor], w: Weights) -> list[Tensor]:
    """y_t = w_tt * x_t + sum_{u != t} w_tu * x_u, the self term first (at N = 2 the original's
    arithmetic: w_self * x_1 + w_other * x_2 and w_self * x_2 + w_other * x_1)."""
    out = []
    for t, x in enumerate(xs):
        y = w[t][t] * x
        for u, other in enumerate(xs):
            if u != t:
                y = y + w[t][u] * other
        out.append(y)
    return out


class _Aggregation(nn.Module):
    """What CAM and SAM share: logits of every (target, source) pair from a hidden vector, a softmax
    over the sources per target, and the mixing. Subclasses build their hidden layer, then the maps
    (``_maps``; in this order, as the reference creates them), and give ``hidden(xs)`` and the
    shape of one weight.

    Args:
        num_tasks: N, the branches joined.
        relation: 'tied' (W_self and W_other) or 'pairwise' (a map per ordered pair of tasks).
    """

    def __init__(self, num_tasks: int, relation: str) -> None:
        super().__init__()
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
        if num_tasks < 1:
            raise ValueError(f"an aggregation joins at least one task, got {num_tasks}")
        self.num_tasks, self.relation = num_tasks, relation

    def _maps(self, features: int, outputs: int, self_prior: bool) -> None:
        """The logit maps: ``features`` (the hidden width) -> ``outputs`` (C for CAM, h*w for SAM)."""
        num_tasks, relation = self.num_tasks, self.relation
        self.self_fc = nn.Linear(features, outputs, bias=False)  # reference: trans1
        self.other_fc = nn.Linear(features, outputs, bias=False)  # reference: trans2
        if relation == "pairwise":
            # W_tu for every ordered pair, positions as keys: "pair.<t>.<u>"; initialised from the tied maps by
            # ``tie_pairwise_`` once the tied maps hold their values (init_afa_ does it).
            self.pair = nn.ModuleDict(
                {
                    str(t): nn.ModuleDict({str(u): nn.Linear(features, outputs, bias=False) for u in range(num_tasks)})
                    for t in range(num_tasks)
                }
            )
        _add_self_prior(self, self_prior)

    def hidden(self, xs: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def logits_shape(self, xs: Sequence[Tensor]) -> tuple[int, ...]:
        raise NotImplementedError

    def weights(self, *xs: Tensor) -> Weights:
        """W[t][u], each broadcastable to the inputs: (B, C, 1, 1) in CAM, (B, 1, h, w) in SAM."""
        n = self.num_tasks
        if len(xs) != n:
            raise ValueError(f"{type(self).__name__} joins {n} branches, got {len(xs)} inputs")
        shape = self.logits_shape(xs)
        if n == 1:  # one source: the softmax over it is 1
            return [[torch.ones(shape, dtype=xs[0].dtype, device=xs[0].device)]]
        g = self.hidden(xs)
        if self.relation == "tied":
            # softmax over (self, other, .., other) = (w_self, (N - 1) w_other) of a 2-way softmax with
            # log(N - 1) added to the other logit: at N = 2 exactly the original's pair softmax.
            a, b = _biased(self, self.self_fc(g)), self.other_fc(g)
            w = torch.stack((a, b + math.log(n - 1)), dim=0).softmax(dim=0)
            w_self, w_other = w[0].view(shape), (w[1] / (n - 1)).view(shape)
            return [[w_self if u == t else w_other for u in range(n)] for t in range(n)]
        rows = []
        for t in range(n):
            logits = [self.pair[str(t)][str(u)](g) for u in range(n)]
            logits[t] = _biased(self, logits[t])
            w = torch.stack(logits, dim=0).softmax(dim=0)
            rows.append([w[u].view(shape) for u in range(n)])
        return rows

    def forward(self, *xs: Tensor) -> list[Tensor]:
        return mix(xs, self.weights(*xs))


def tie_pairwise_(module: _Aggregation) -> None:
    """Set every pairwise map to the tied maps (W_tt <- W_self, W_tu <- W_other): the layer then
    computes what the tied layer computes."""
    if module.relation != "pairwise":
        return
    with torch.no_grad():
        for t, row in module.pair.items():
            for u, fc in row.items():
                fc.weight.copy_((module.self_fc if t == u else module.other_fc).weight)


class CAM(_Aggregation):
    """Channel aggregation module: s = [GAP(x_1) .. GAP(x_N)] (B, N*C), z = ReLU(W_fc s) (B, d),
    logits W_tu z (B, C), a softmax over the sources per channel.

    Args:
        channels: C, channels of each input map.
        num_tasks: N, the branches joined (2 in the paper).
        relation: 'tied' or 'pairwise' (module docstring).
        reduction: r; the hidden width is d = max(N*C / r, min_hidden).
        min_hidden: L, the smallest hidden width.
        self_prior: start leaning towards a branch's own features (fusion_init='self').
    """

    def __init__(
        self,
        channels: int,
        num_tasks: int = 2,
        relation: str = "tied",
        reduction: int = 16,
        min_hidden: int = 32,
        self_prior: bool = False,
    ) -> None:
        super().__init__(num_tasks, relation)
        hidden = max(num_tasks * channels // reduction, min_hidden)
        self.reduce = nn.Linear(num_tasks * channels, hidden, bias=False)  # reference: fc
        self._maps(hidden, channels, self_prior)

    def hidden(self, xs: Sequence[Tensor]) -> Tensor:
        s = torch.cat([x.mean(dim=(2, 3)) for x in xs], dim=1)  # (B, N*C)
        return F.relu(self.reduce(s))  # (B, d)

    def logits_shape(self, xs: Sequence[Tensor]) -> tuple[int, ...]:
        return (xs[0].shape[0], xs[0].shape[1], 1, 1)


class SAM(_Aggregation):
    """Spatial aggregation module, built for one feature size: m = [mean_c(x_1) .. mean_c(x_N)]
    (B, N, h, w), g = ReLU(conv7x7(m)) flattened (B, h*w), logits U_tu g (B, h*w), a softmax over
    the sources per position.

    The position-to-position linear maps (h*w x h*w) tie the module to the size it was built for;
    any other size raises a ValueError that says which inputs fit.

    Args:
        size: (h, w) of the feature maps.
        stride: total stride of the network at this point, used only in the size error.
        kernel_size: the spatial conv's kernel (padding keeps the size).
        num_tasks: N, the branches joined (2 in the paper).
        relation: 'tied' or 'pairwise' (module docstring).
        self_prior: start leaning towards a branch's own features (fusion_init='self').
    """

    def __init__(
        self,
        size: tuple[int, int],
        stride: int = 1,
        kernel_size: int = 7,
        num_tasks: int = 2,
        relation: str = "tied",
        self_prior: bool = False,
    ) -> None:
        super().__init__(num_tasks, relation)
        self.size = (int(size[0]), int(size[1]))
        self.stride = stride
        self.conv = nn.Conv2d(num_tasks, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self._maps(self.size[0] * self.size[1], self.size[0] * self.size[1], self_prior)

    def _check_size(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) == self.size:
            return
        h, w = self.size
        s = self.stride
        # Every stride-2 step rounds up, so a feature size f comes from inputs (f-1)*s+1 .. f*s.
        raise ValueError(
            f"SAM was built for {h}x{w} feature maps but got {x.shape[-2]}x{x.shape[-1]}; "
            f"at stride {s} that needs inputs of {(h - 1) * s + 1}-{h * s} x {(w - 1) * s + 1}-{w * s} px "
            f"(e.g. {h * s}x{w * s}); build the model with the crop size you feed it"
        )

    def hidden(self, xs: Sequence[Tensor]) -> Tensor:
        self._check_size(xs[0])
        m = torch.cat([x.mean(dim=1, keepdim=True) for x in xs], dim=1)  # (B, N, h, w)
        return F.relu(self.conv(m)).flatten(1)  # (B, h*w)

    def logits_shape(self, xs: Sequence[Tensor]) -> tuple[int, ...]:
        self._check_size(xs[0])
        return (xs[0].shape[0], 1, *self.size)


class _GradSwitch:
    """Shared state of one adaptive-mode module call: the pre-fusion gradient per branch, and
    an optional ``on_choice(t, use_pre)`` callback that counts the fall-backs."""

    def __init__(self, tau: float, on_choice: Callable[[int, Tensor], None] | None = None) -> None:
        self.tau = tau
        self.pre: dict[int, Tensor] = {}
        self.on_choice = on_choice


class _CapturePreFusion(torch.autograd.Function):
    """Identity on a module output; its backward records dL/dy_t (the pre-fusion gradient)."""

    @staticmethod
    def forward(ctx, y: Tensor, switch: _GradSwitch, t: int) -> Tensor:  # type: ignore[override]
        ctx.switch, ctx.t = switch, t
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.switch.pre[ctx.t] = grad
        return grad, None, None


class _ChooseGradient(torch.autograd.Function):
    """Identity on a module input; its backward returns the fused gradient dL/dx_t unless its
    norm differs from the recorded pre-fusion gradient's by more than a factor tau."""

    @staticmethod
    def forward(ctx, x: Tensor, switch: _GradSwitch, t: int) -> Tensor:  # type: ignore[override]
        ctx.switch, ctx.t = switch, t
        return x.view_as(x)

    @staticmethod
    def backward(ctx, fused: Tensor):  # type: ignore[override]
        pre = ctx.switch.pre.pop(ctx.t, None)
        if pre is None:  # the task's output did not reach the loss: nothing to compare with
            return fused, None, None
        tau = ctx.switch.tau
        n_fused, n_pre = fused.norm(), pre.norm()
        # Stays on the device (no .item()): a tensor-valued choice costs no host sync.
        use_pre = (n_fused > tau * n_pre) | (n_fused * tau < n_pre)
        if ctx.switch.on_choice is not None:
            ctx.switch.on_choice(ctx.t, use_pre)
        return torch.where(use_pre, pre, fused), None, None


class AFALayer(TaskFusion):
    """CAM, ReLU, SAM, ReLU between the task branches, with a gradient mode.

    ``forward({t: x_t})`` returns ``{t: y_t}``; ``fuse(x_1, .., x_N)`` is the same on the maps in task
    order. While monitored (see :class:`models.fusion.TaskFusion`) it also records, per module, the
    mean weight each target task gives each source task (``cam/w/<target>/<source>``) and, in
    adaptive mode, how often each branch fell back.

    Args:
        channels: channels of the input maps.
        size: (h, w) of the input maps (SAM is built for it).
        stride: network stride at this point, for SAM's size error.
        grad_mode: 'joint', 'protect' or 'adaptive'.
        tau: adaptive mode's norm-ratio threshold (> 1).
        protect_tasks: in protect mode, the branch positions that are shielded; task 1 only by
            default, as at the original code's latest commit.
        tasks: the task names, in branch order (two in the paper).
        self_prior: start both modules leaning towards a branch's own features (fusion_init='self').
        relation: 'tied' (the original's two maps, at any number of tasks) or 'pairwise'.
    """

    def __init__(
        self,
        channels: int,
        size: tuple[int, int],
        stride: int = 1,
        grad_mode: str = "protect",
        tau: float = DEFAULT_TAU,
        protect_tasks: Sequence[int] = (0,),
        tasks: Sequence[str] = ("task1", "task2"),
        self_prior: bool = False,
        relation: str = "tied",
    ) -> None:
        super().__init__(tasks)
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        if not tau > 1:
            raise ValueError(f"tau must be > 1 (a factor between two norms), got {tau}")
        n = len(self.tasks)
        if not set(protect_tasks) <= set(range(n)):
            raise ValueError(f"protect_tasks holds branch positions 0..{n - 1}, got {tuple(protect_tasks)}")
        self.grad_mode = grad_mode
        self.tau = float(tau)
        self.protect_tasks = tuple(sorted(set(protect_tasks)))
        self.cam = CAM(channels, n, relation, self_prior=self_prior)
        self.sam = SAM(size, stride, num_tasks=n, relation=relation, self_prior=self_prior)

    def _apply_module(self, name: str, xs: Sequence[Tensor]) -> list[Tensor]:
        module = self.cam if name == "cam" else self.sam
        w = module.weights(*xs)
        if self._recording:
            for t, row in enumerate(w):
                for u, w_tu in enumerate(row):
                    self._record(f"{name}/w/{self.tasks[t]}/{self.tasks[u]}", w_tu.mean())
        return mix(xs, w)

    def _fuse(self, name: str, xs: Sequence[Tensor]) -> list[Tensor]:
        """One module (CAM or SAM) in the layer's gradient mode, followed by ReLU."""
        if self.grad_mode == "joint" or not torch.is_grad_enabled():
            ys = self._apply_module(name, xs)
        elif self.grad_mode == "protect":
            ins = [x.detach() if t in self.protect_tasks else x for t, x in enumerate(xs)]
            ys = self._apply_module(name, ins)
            # Straight-through: the value is the module's, the gradient to x_t is dL/dy_t.
            ys = [y + x - x.detach() if t in self.protect_tasks else y for t, (y, x) in enumerate(zip(ys, xs))]
        else:
            count = None
            if self._recording:

                def count(t: int, use_pre: Tensor) -> None:
                    self._record(f"fallback/{self.tasks[t]}", use_pre.float())

            switch = _GradSwitch(self.tau, count)
            ys = self._apply_module(name, [_ChooseGradient.apply(x, switch, t) for t, x in enumerate(xs)])
            ys = [_CapturePreFusion.apply(y, switch, t) for t, y in enumerate(ys)]
        return [F.relu(y) for y in ys]

    def fuse(self, *xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self._fuse("sam", self._fuse("cam", xs)))

    def extra_repr(self) -> str:
        extra = f", protect_tasks={self.protect_tasks}" if self.grad_mode == "protect" else ""
        extra += f", tau={self.tau}" if self.grad_mode == "adaptive" else ""
        return f"grad_mode={self.grad_mode!r}{extra}, relation={self.cam.relation!r}"


def init_afa_(layer: AFALayer) -> None:
    """The reference's initialisation: linears Kaiming normal (fan in), the spatial conv
    normal(0, sqrt(2 / (k*k*out_channels))); pairwise maps start as copies of the tied ones."""
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
    tie_pairwise_(layer.cam)
    tie_pairwise_(layer.sam)
