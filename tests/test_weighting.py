"""Loss weightings: values and gradients against numbers worked out by hand, and exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

from engine.weighting import (
    DWA,
    LOSS_WEIGHTINGS,
    EqualWeighting,
    GradNorm,
    LossWeighting,
    UncertaintyWeighting,
    build_weighting,
)

TASKS = ["seg", "depth"]


def roundtrip(module: LossWeighting) -> dict:
    """The state as a checkpoint holds it: saved and loaded back with weights_only=True."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def values(weights: dict[str, Tensor]) -> dict[str, float]:
    return {t: float(w) for t, w in weights.items()}


def test_build_weighting_names() -> None:
    kinds = {"equal": EqualWeighting, "dwa": DWA, "uncertainty": UncertaintyWeighting, "gradnorm": GradNorm}
    assert set(kinds) == set(LOSS_WEIGHTINGS)
    for name, cls in kinds.items():
        w = build_weighting(name, TASKS)
        assert type(w) is cls and w.tasks == TASKS
    assert build_weighting("dwa", TASKS, dwa_temp=0.5).temperature == 0.5
    assert build_weighting("gradnorm", TASKS, gradnorm_alpha=0.0).alpha == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "softmax"}, "unknown loss weighting 'softmax'; expected one of equal, dwa"),
        ({"name": "dwa", "dwa_temp": 0.0}, "temperature .* > 0, got 0.0"),
        ({"name": "dwa", "dwa_temp": -2.0}, "got -2.0"),
        ({"name": "dwa", "dwa_temp": float("nan")}, "got nan"),
        ({"name": "gradnorm", "gradnorm_alpha": -0.5}, "alpha .* >= 0, got -0.5"),
        ({"name": "dwa", "tasks": ["seg"]}, r"DWA needs at least 2 tasks, got 1: \['seg'\]"),
        ({"name": "uncertainty", "tasks": []}, "at least 2 tasks, got 0"),
        ({"name": "equal", "tasks": "seg"}, "got the string 'seg'"),
        ({"name": "dwa", "tasks": ["seg", "seg"]}, "unique"),
    ],
)
def test_build_weighting_errors(kwargs: dict, match: str) -> None:
    kwargs = {"tasks": TASKS, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_weighting(kwargs.pop("name"), kwargs.pop("tasks"), **kwargs)


def test_equal_is_the_sum() -> None:
    w = EqualWeighting(TASKS)
    a, b = torch.tensor(1.25, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    total = w.combine({"seg": a, "depth": b, "total": torch.tensor(99.0)})  # extra keys are ignored
    assert total.item() == 1.75
    total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == 1.0
    assert values(w.weights()) == {"seg": 1.0, "depth": 1.0}
    with pytest.raises(ValueError, match=r"lack task\(s\) \['depth'\]"):
        w.combine({"seg": a})


def dwa_expected(prev: list[float], last: list[float], temp: float) -> list[float]:
    r = [la / p for la, p in zip(last, prev)]
    ex = [math.exp(x / temp) for x in r]
    return [len(r) * e / sum(ex) for e in ex]


def test_dwa_weights_by_hand() -> None:
    tasks = ["a", "b", "c"]
    w = DWA(tasks)  # T = 2
    assert values(w.weights()) == {"a": 1.0, "b": 1.0, "c": 1.0}  # epoch 0
    w.end_epoch({"a": 2.0, "b": 1.0, "c": 4.0})
    assert values(w.weights()) == {"a": 1.0, "b": 1.0, "c": 1.0}  # epoch 1
    w.end_epoch({"a": 1.0, "b": 0.9, "c": 4.0})
    # epoch 2: r = (0.5, 0.9, 1.0); lambda = 3 exp(r/2) / sum exp(r/2)
    z = math.exp(0.25) + math.exp(0.45) + math.exp(0.5)
    want = [3 * math.exp(0.25) / z, 3 * math.exp(0.45) / z, 3 * math.exp(0.5) / z]
    assert list(values(w.weights()).values()) == pytest.approx(want, rel=1e-6)
    assert want[0] < want[1] < want[2]  # the task whose loss fell least gets the most weight
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)}
    assert w.combine(losses).item() == pytest.approx(want[0] + 2 * want[1] + 3 * want[2], rel=1e-6)
    # epoch 3 uses epochs 1 and 2 only: r = (0.8 / 1.0, 0.9 / 0.9, 2.0 / 4.0)
    w.end_epoch({"a": 0.8, "b": 0.9, "c": 2.0})
    z = math.exp(0.4) + math.exp(0.5) + math.exp(0.25)
    want = [3 * math.exp(0.4) / z, 3 * math.exp(0.5) / z, 3 * math.exp(0.25) / z]
    assert list(values(w.weights()).values()) == pytest.approx(want, rel=1e-6)


def test_dwa_temperature() -> None:
    history = [{"seg": 2.0, "depth": 1.0}, {"seg": 1.0, "depth": 0.9}]  # r = (0.5, 0.9)
    got = {}
    for temp in (0.5, 2.0, 100.0):
        w = DWA(TASKS, temperature=temp)
        for means in history:
            w.end_epoch(means)
        got[temp] = values(w.weights())["seg"]
    # seg = 2 / (1 + exp((0.9 - 0.5) / T))
    for temp in got:
        assert got[temp] == pytest.approx(2 / (1 + math.exp(0.4 / temp)), rel=1e-6)
    assert got[0.5] < got[2.0] < got[100.0] < 1.0  # a higher temperature flattens towards 1
    assert got[100.0] == pytest.approx(1.0, abs=2e-3)


def test_dwa_rejects_bad_means() -> None:
    w = DWA(TASKS)
    with pytest.raises(ValueError, match="finite epoch-mean losses > 0"):
        w.end_epoch({"seg": 0.0, "depth": 1.0})
    with pytest.raises(ValueError, match="finite epoch-mean losses > 0"):
        w.end_epoch({"seg": float("nan"), "depth": 1.0})
    with pytest.raises(ValueError, match="lack task"):
        w.end_epoch({"seg": 1.0})


def test_dwa_resume_mid_history() -> None:
    tasks = ["a", "b", "c"]
    epochs = [
        {"a": 3.0, "b": 2.0, "c": 1.0},
        {"a": 2.5, "b": 1.2, "c": 0.95},
        {"a": 2.4, "b": 1.0, "c": 0.9},
        {"a": 2.0, "b": 0.99, "c": 0.7},
        {"a": 1.9, "b": 0.7, "c": 0.69},
    ]
    losses = {"a": torch.tensor(0.3), "b": torch.tensor(1.7), "c": torch.tensor(2.9)}
    for cut in (1, 2, 3):  # resumed during the fixed epochs and later
        first = DWA(tasks, temperature=1.5)
        for means in epochs[:cut]:
            first.end_epoch(means)
        resumed = DWA(tasks, temperature=1.5)
        resumed.load_state_dict(roundtrip(first))
        assert torch.equal(resumed.lambdas, first.lambdas)
        for means in epochs[cut:]:
            first.end_epoch(means)
            resumed.end_epoch(means)
            assert values(resumed.weights()) == values(first.weights())
            assert torch.equal(resumed.combine(losses), first.combine(losses))
    # Without the state, a run resumed after epoch 3 would start the history again: weights 1 in epoch 4.
    fresh, first = DWA(tasks, temperature=1.5), DWA(tasks, temperature=1.5)
    for means in epochs[:4]:
        first.end_epoch(means)
    fresh.end_epoch(epochs[3])
    assert values(fresh.weights()) == {"a": 1.0, "b": 1.0, "c": 1.0} != values(first.weights())


def test_state_of_other_tasks_is_refused() -> None:
    state = roundtrip(DWA(["seg", "depth"]))
    with pytest.raises(ValueError, match=r"for tasks \['seg', 'depth'\], this weighting has \['depth', 'seg'\]"):
        DWA(["depth", "seg"]).load_state_dict(state)


def test_uncertainty_total_gradient_and_weights() -> None:
    w = UncertaintyWeighting(TASKS)
    assert isinstance(w.log_vars, nn.Parameter) and w.log_vars.tolist() == [-0.5, -0.5]
    seg, depth = 2.0, 0.25
    a, b = torch.tensor(seg, requires_grad=True), torch.tensor(depth, requires_grad=True)
    total = w.combine({"seg": a, "depth": b})
    # sum_t L_t e^{-s} / 2 + s / 2 at s = -0.5
    assert total.item() == pytest.approx((seg + depth) * math.exp(0.5) / 2 - 0.5, rel=1e-6)
    total.backward()
    # d/ds [L e^{-s} / 2 + s / 2] = -L e^{-s} / 2 + 1/2
    want = [-seg * math.exp(0.5) / 2 + 0.5, -depth * math.exp(0.5) / 2 + 0.5]
    assert w.log_vars.grad.tolist() == pytest.approx(want, rel=1e-6)
    assert a.grad.item() == pytest.approx(math.exp(0.5) / 2, rel=1e-6)
    assert values(w.weights()) == pytest.approx({"seg": math.exp(0.5) / 2, "depth": math.exp(0.5) / 2}, rel=1e-6)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(4.0)]))
    assert values(w.weights()) == pytest.approx({"seg": 0.5, "depth": 0.125}, rel=1e-6)
    state = roundtrip(w)
    other = UncertaintyWeighting(TASKS)
    other.load_state_dict(state)
    assert torch.equal(other.log_vars, w.log_vars)


class TwoHeads(nn.Module):
    """A linear trunk shared by two linear heads; losses are mean squared errors."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS})

    def losses(self, x: Tensor, y: dict[str, Tensor]) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {t: (self.heads[t](z).squeeze(1) - y[t]).square().mean() for t in TASKS}


def trunk_grads(net: TwoHeads, x: Tensor, y: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """d L_t / d(trunk weight, trunk bias) in closed form (no autograd)."""
    with torch.no_grad():
        z = x @ net.trunk.weight.T + net.trunk.bias  # (N, 4)
        out = {}
        for t in TASKS:
            a, c = net.heads[t].weight, net.heads[t].bias  # (1, 4), (1,)
            dy = 2 * ((z @ a.T).squeeze(1) + c - y[t]) / x.shape[0]  # dL/dy, (N,)
            dz = dy[:, None] * a  # (N, 4)
            out[t] = (dz.T @ x, dz.sum(0))  # (4, 3), (4,)
        return out


def batch(seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, generator=g)
    return x, {t: torch.randn(5, generator=g) for t in TASKS}


def test_gradnorm_gradients_by_hand() -> None:
    torch.manual_seed(0)
    net = TwoHeads()
    gn = GradNorm(TASKS)  # alpha 1.5
    assert isinstance(gn.task_weights, nn.Parameter) and gn.task_weights.tolist() == [1.0, 1.0]
    shared = list(net.trunk.parameters())
    opt = torch.optim.SGD(gn.parameters(), lr=0.1)

    x0, y0 = batch(1)
    losses0 = net.losses(x0, y0)
    l0 = [losses0[t].item() for t in TASKS]
    gn.combine(losses0, shared).backward()  # first step: records L(0)
    assert gn.initial_losses.tolist() == pytest.approx(l0, rel=1e-6)

    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([0.5, 1.5]))
    net.zero_grad()
    gn.zero_grad()
    x, y = batch(2)
    losses = net.losses(x, y)
    total = gn.combine(losses, shared)
    total.backward()

    w = [0.5, 1.5]
    L = [losses[t].item() for t in TASKS]
    assert total.item() == pytest.approx(w[0] * L[0] + w[1] * L[1], rel=1e-6)
    g = trunk_grads(net, x, y)
    n = [math.sqrt(g[t][0].square().sum().item() + g[t][1].square().sum().item()) for t in TASKS]
    G = [w[0] * n[0], w[1] * n[1]]  # || d(w_t L_t) / dW ||
    assert gn.last_grad_norms.tolist() == pytest.approx(G, rel=1e-5)
    # r_t = (L_t / L_t(0)) / mean; target = mean(G) r_t^1.5; d/dw_t sum |G - target| = sign(G_t - target_t) n_t
    inv = [L[0] / l0[0], L[1] / l0[1]]
    r = [inv[0] / ((inv[0] + inv[1]) / 2), inv[1] / ((inv[0] + inv[1]) / 2)]
    target = [(G[0] + G[1]) / 2 * r[0] ** 1.5, (G[0] + G[1]) / 2 * r[1] ** 1.5]
    want_w_grad = [math.copysign(n[i], G[i] - target[i]) for i in range(2)]
    assert min(abs(G[i] - target[i]) for i in range(2)) > 1e-3  # the signs are not a coin toss
    assert gn.task_weights.grad.tolist() == pytest.approx(want_w_grad, rel=1e-5)
    # The network gets the gradient of sum_t w_t L_t, nothing from the GradNorm loss.
    want_weight = w[0] * g["seg"][0] + w[1] * g["depth"][0]
    want_bias = w[0] * g["seg"][1] + w[1] * g["depth"][1]
    torch.testing.assert_close(net.trunk.weight.grad, want_weight)
    torch.testing.assert_close(net.trunk.bias.grad, want_bias)
    assert values(gn.weights()) == {"seg": 0.5, "depth": 1.5}

    opt.step()
    stepped = gn.task_weights.detach().clone()
    assert stepped.sum().item() != pytest.approx(2.0)
    gn.after_step()
    assert gn.task_weights.sum().item() == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(gn.task_weights.detach(), stepped * 2 / stepped.sum())


def test_gradnorm_gradient_accumulates_and_follows_grad_scaling() -> None:
    torch.manual_seed(0)
    net = TwoHeads()
    gn = GradNorm(TASKS)
    shared = list(net.trunk.parameters())
    x, y = batch(3)
    gn.combine(net.losses(x, y), shared).backward()
    once = gn.task_weights.grad.clone()
    gn.combine(net.losses(x, y), shared).backward()  # w's gradient adds up like any other
    torch.testing.assert_close(gn.task_weights.grad, 2 * once)
    gn.zero_grad()
    (8.0 * gn.combine(net.losses(x, y), shared)).backward()  # what a GradScaler does
    torch.testing.assert_close(gn.task_weights.grad, 8 * once)


def test_gradnorm_needs_shared_parameters() -> None:
    net = TwoHeads()
    gn = GradNorm(TASKS)
    x, y = batch(4)
    with pytest.raises(ValueError, match="GradNorm needs the shared parameters"):
        gn.combine(net.losses(x, y))
    with pytest.raises(ValueError, match="'seg''s loss does not depend on the shared parameters"):
        gn.combine(net.losses(x, y), list(net.heads["depth"].parameters()))
    # Evaluation (no graph): the weighted sum, without the shared parameters and without recording L(0).
    with torch.no_grad():
        losses = net.losses(x, y)
        assert gn.combine(losses).item() == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-6)
    assert not gn.initialised.item()


def test_gradnorm_resume_keeps_initial_losses() -> None:
    torch.manual_seed(0)
    net = TwoHeads()
    shared = list(net.trunk.parameters())

    def step(gn: GradNorm, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """One training step of the weights only (the network stays fixed, so both runs see it alike)."""
        opt = torch.optim.SGD(gn.parameters(), lr=0.05)
        opt.zero_grad()
        net.zero_grad()
        x, y = batch(seed)
        total = gn.combine(net.losses(x, y), shared)
        total.backward()
        out = (total.detach(), gn.task_weights.grad.clone(), net.trunk.weight.grad.clone())
        opt.step()
        gn.after_step()
        return out

    first = GradNorm(TASKS, alpha=1.0)
    for seed in (10, 11, 12):
        step(first, seed)
    resumed = GradNorm(TASKS, alpha=1.0)
    resumed.load_state_dict(roundtrip(first))
    assert bool(resumed.initialised) and torch.equal(resumed.initial_losses, first.initial_losses)
    for seed in (13, 14, 15):
        a, b = step(first, seed), step(resumed, seed)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        assert values(resumed.weights()) == values(first.weights())
    # A run that lost L(0) would record it anew and weigh differently.
    fresh = GradNorm(TASKS, alpha=1.0)
    with torch.no_grad():
        fresh.task_weights.copy_(first.task_weights)
    assert not torch.equal(step(fresh, 16)[1], step(first, 16)[1])


@pytest.mark.parametrize(("alpha", "signs"), [(0.0, [1.0, -1.0]), (1.5, [-1.0, 1.0]), (3.0, [-1.0, 1.0])])
def test_gradnorm_target_uses_alpha(alpha: float, signs: list[float]) -> None:
    # L_t = k_t W^2 at W = 1: dL_t/dW = 2 k_t. Step 1 (k = 1, 1) records L(0) = (1, 1). Step 2, k = (2, 1):
    # G = (4, 2), mean 3, L / L(0) = (2, 1), r = (4/3, 2/3), target = 3 r^alpha:
    # alpha 0 -> (3, 3); alpha 1.5 -> (4.62, 1.63); alpha 3 -> (7.11, 0.89). dL_grad/dw_t = sign(G_t - target_t) 2 k_t.
    shared = nn.Parameter(torch.ones(1))
    gn = GradNorm(TASKS, alpha=alpha)
    gn.combine({"seg": (shared**2).sum(), "depth": (shared**2).sum()}, [shared]).backward()
    gn.zero_grad()
    total = gn.combine({"seg": 2 * (shared**2).sum(), "depth": (shared**2).sum()}, [shared])
    assert total.item() == 3.0
    total.backward()
    assert gn.last_grad_norms.tolist() == [4.0, 2.0]
    assert gn.task_weights.grad.tolist() == pytest.approx([4.0 * signs[0], 2.0 * signs[1]])


def test_equal_weighting_is_the_plain_loss_of_a_single_task_family():
    w = build_weighting("equal", ["pair"])
    loss = torch.tensor(0.7)
    assert w.combine({"pair": loss}) == loss and float(w.weights()["pair"]) == 1.0
