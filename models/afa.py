"""Adaptive Feature Aggregation (AFA) between two task branches.

Shen et al., "Deep Adaptive Feature Aggregation in Multi-task Convolutional Neural
Networks", CIKM 2020. An AFA layer takes the feature maps of two task branches at the
same depth, x_1 and x_2 (B, C, H, W), and returns one map per task of the same shape:

    AFA(x_1, x_2) = ReLU(SAM(ReLU(CAM(x_1, x_2))))

CAM (channel aggregation) and SAM (spatial aggregation) each predict a pair of weights
(w_self, w_other) with a 2-way softmax and mix the two maps:

    y_1 = w_self * x_1 + w_other * x_2
    y_2 = w_self * x_2 + w_other * x_1

The same two weight tensors serve both tasks, exactly as in the reference code.

Gradient modes (forward values are identical in all of them):

* ``joint``: plain autograd through the layer.
* ``protect``: the reference's default. Each module is computed with the protected task's
  input detached, and that task gets a straight-through term,
  y_1 = M_1(sg(x_1), x_2) + x_1 - sg(x_1), so the gradient reaching x_1 is dL/dy_1 alone (the
  gradient "before fusion"), while x_2 and the module's parameters learn from both outputs.
  At the original code's latest commit only task 1 (gender; segmentation: the task with the
  smaller gradient magnitude) is protected, which is our default; ``protect_tasks`` names the
  shielded branches, e.g. both, as in the original's commits before August 2020.
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

from .fusion import PairFusion

GRAD_MODES = ("joint", "protect", "adaptive")

# fusion_init='self': the learned self logit starts log(9) above the other one, so that a layer
# first passes 0.9 of a branch's own features and 0.1 of the other's (cross-stitch's start).
SELF_PRIOR = math.log(9.0)

# tau = 2: the fused gradient of a branch is its own gradient re-weighted by softmax weights
# that sum to one plus the other task's share, so with balanced tasks the two norms stay
# within a factor of about two; a larger ratio means the other task dominates (or cancels)
# the branch's gradient, which is the case the mechanism exists for.
DEFAULT_TAU = 2.0


def _pair_softmax(self_logits: Tensor, other_logits: Tensor) -> tuple[Tensor, Tensor]:
    """2-way softmax between two logit tensors of equal shape, element by element."""
    w = torch.stack((self_logits, other_logits), dim=0).softmax(dim=0)
    return w[0], w[1]


def _add_self_prior(module: nn.Module, enabled: bool) -> None:
    """fusion_init='self': a learned scalar added to the self logits, starting at SELF_PRIOR.
    Absent otherwise, so the default layers hold exactly the reference's parameters."""
    module.self_prior = nn.Parameter(torch.tensor(SELF_PRIOR)) if enabled else None


def _biased(module: nn.Module, self_logits: Tensor) -> Tensor:
    return self_logits if module.self_prior is None else self_logits + module.self_prior


def _mix(x1: Tensor, x2: Tensor, w_self: Tensor, w_other: Tensor) -> tuple[Tensor, Tensor]:
    return w_self * x1 + w_other * x2, w_self * x2 + w_other * x1


class CAM(nn.Module):
    """Channel aggregation module.

    Args:
        channels: C, channels of each input map.
        reduction: r; the hidden width is d = max(2C / r, min_hidden).
        min_hidden: L, the smallest hidden width.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 32, self_prior: bool = False) -> None:
        super().__init__()
        hidden = max(2 * channels // reduction, min_hidden)
        self.reduce = nn.Linear(2 * channels, hidden, bias=False)  # reference: fc
        self.self_fc = nn.Linear(hidden, channels, bias=False)  # reference: trans1
        self.other_fc = nn.Linear(hidden, channels, bias=False)  # reference: trans2
        _add_self_prior(self, self_prior)

    def weights(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """(w_self, w_other), each (B, C, 1, 1)."""
        s = torch.cat((x1.mean(dim=(2, 3)), x2.mean(dim=(2, 3))), dim=1)  # (B, 2C)
        z = F.relu(self.reduce(s))  # (B, d)
        w_self, w_other = _pair_softmax(_biased(self, self.self_fc(z)), self.other_fc(z))  # (B, C) each
        return w_self[..., None, None], w_other[..., None, None]

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        return _mix(x1, x2, *self.weights(x1, x2))


class SAM(nn.Module):
    """Spatial aggregation module, built for one feature size.

    The position-to-position linear maps (h*w x h*w) tie the module to the size it was
    built for; any other size raises a ValueError that says which inputs fit.

    Args:
        size: (h, w) of the feature maps.
        stride: total stride of the network at this point, used only in the size error.
        kernel_size: the spatial conv's kernel (padding keeps the size).
    """

    def __init__(self, size: tuple[int, int], stride: int = 1, kernel_size: int = 7, self_prior: bool = False) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.stride = stride
        positions = self.size[0] * self.size[1]
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.self_fc = nn.Linear(positions, positions, bias=False)  # reference: trans1
        self.other_fc = nn.Linear(positions, positions, bias=False)  # reference: trans2
        _add_self_prior(self, self_prior)

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

    def weights(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """(w_self, w_other), each (B, 1, h, w)."""
        self._check_size(x1)
        m = torch.cat((x1.mean(dim=1, keepdim=True), x2.mean(dim=1, keepdim=True)), dim=1)  # (B, 2, h, w)
        g = F.relu(self.conv(m)).flatten(1)  # (B, h*w)
        w_self, w_other = _pair_softmax(_biased(self, self.self_fc(g)), self.other_fc(g))
        shape = (x1.shape[0], 1, *self.size)
        return w_self.view(shape), w_other.view(shape)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        return _mix(x1, x2, *self.weights(x1, x2))


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


class AFALayer(PairFusion):
    """CAM, ReLU, SAM, ReLU between two branches, with a gradient mode.

    ``forward({t1: x_1, t2: x_2})`` returns ``{t1: y_1, t2: y_2}``; ``fuse(x_1, x_2)`` is the same
    on a pair. While monitored (see :class:`models.fusion.PairFusion`) it also records the mean
    ``w_self`` of CAM and SAM and, in adaptive mode, how often each branch fell back.

    Args:
        channels: channels of the two input maps.
        size: (h, w) of the input maps (SAM is built for it).
        stride: network stride at this point, for SAM's size error.
        grad_mode: 'joint', 'protect' or 'adaptive'.
        tau: adaptive mode's norm-ratio threshold (> 1).
        protect_tasks: in protect mode, the branch positions (0, 1) that are shielded; task 1
            only by default, as at the original code's latest commit.
        tasks: the two task names, in branch order.
        self_prior: start both modules leaning towards a branch's own features (fusion_init='self').
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
    ) -> None:
        super().__init__(tasks)
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        if not tau > 1:
            raise ValueError(f"tau must be > 1 (a factor between two norms), got {tau}")
        if not set(protect_tasks) <= {0, 1}:
            raise ValueError(f"protect_tasks holds branch positions 0 and/or 1, got {tuple(protect_tasks)}")
        self.grad_mode = grad_mode
        self.tau = float(tau)
        self.protect_tasks = tuple(sorted(set(protect_tasks)))
        self.cam = CAM(channels, self_prior=self_prior)
        self.sam = SAM(size, stride, self_prior=self_prior)

    def _apply_module(self, name: str, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        module = self.cam if name == "cam" else self.sam
        w_self, w_other = module.weights(x1, x2)
        if self._recording:
            self._record(f"{name}/w_self", w_self.mean())
        return _mix(x1, x2, w_self, w_other)

    def _fuse(self, name: str, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """One module (CAM or SAM) in the layer's gradient mode, followed by ReLU."""
        if self.grad_mode == "joint" or not torch.is_grad_enabled():
            y1, y2 = self._apply_module(name, x1, x2)
        elif self.grad_mode == "protect":
            xs = (x1, x2)
            ins = [x.detach() if t in self.protect_tasks else x for t, x in enumerate(xs)]
            ys = self._apply_module(name, *ins)
            # Straight-through: the value is the module's, the gradient to x_t is dL/dy_t.
            y1, y2 = (y + x - x.detach() if t in self.protect_tasks else y for t, (y, x) in enumerate(zip(ys, xs)))
        else:
            count = None
            if self._recording:
                def count(t: int, use_pre: Tensor) -> None:
                    self._record(f"fallback/{self.tasks[t]}", use_pre.float())
            switch = _GradSwitch(self.tau, count)
            ys = self._apply_module(name, _ChooseGradient.apply(x1, switch, 0), _ChooseGradient.apply(x2, switch, 1))
            y1, y2 = (_CapturePreFusion.apply(y, switch, t) for t, y in enumerate(ys))
        return F.relu(y1), F.relu(y2)

    def fuse(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self._fuse("cam", x1, x2)
        return self._fuse("sam", x1, x2)

    def extra_repr(self) -> str:
        extra = f", protect_tasks={self.protect_tasks}" if self.grad_mode == "protect" else ""
        extra += f", tau={self.tau}" if self.grad_mode == "adaptive" else ""
        return f"grad_mode={self.grad_mode!r}{extra}"


def init_afa_(layer: AFALayer) -> None:
    """The reference's initialisation: linears Kaiming normal (fan in), the spatial conv
    normal(0, sqrt(2 / (k*k*out_channels)))."""
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
