"""Gradient methods: values worked out by hand, the optimality and invariance properties the papers state,
and exact resume of the stateful ones."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from torch import Tensor

from engine.gradients import (
    FAMO,
    GRADIENT_METHODS,
    OPTIONS,
    SOLVER_INSTALL,
    Aggregator,
    GradientAggregator,
    MissingSolver,
    _aligned_balance,
    make_aggregator,
)

try:
    import cvxpy  # noqa: F401

    HAVE_CVXPY = True
except ImportError:
    HAVE_CVXPY = False

# Every method that takes G; nash only where its optional solver is installed.
AGGREGATORS = [m for m in GRADIENT_METHODS if m != "famo" and (m != "nash" or HAVE_CVXPY)]
WEIGHTED = [m for m in AGGREGATORS if m != "pcgrad"]
needs_cvxpy = pytest.mark.skipif(not HAVE_CVXPY, reason="cvxpy (optional solver extra) not installed")


def t64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Two conflicting gradients (g_1 . g_2 = -1), three random ones, parallel ones, one with a zero row.
CONFLICT = t64([[1.0, 0.0], [-1.0, 1.0]])
THREE = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
PARALLEL = t64([[1.0, -2.0, 0.5]]) * t64([[1.0], [2.0], [0.5]])  # g, 2g, 0.5g
ZERO_ROW = THREE.clone()
ZERO_ROW[1] = 0.0


def roundtrip(state: dict) -> dict:
    """The state as a checkpoint holds it: saved and loaded back with weights_only=True."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def close(a: Tensor, b: Tensor | list[float], tol: float = 1e-10) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------
# The seam


def test_make_aggregator_names_and_flags() -> None:
    assert GRADIENT_METHODS == ("pcgrad", "cagrad", "mgda", "imtl", "nash", "aligned", "upgrad", "famo")
    assert set(OPTIONS) == set(GRADIENT_METHODS)
    for name in AGGREGATORS + ["famo"]:
        agg = make_aggregator(name)
        assert isinstance(agg, Aggregator) and agg.name == name
        assert agg.needs_gradients is (name != "famo")
        assert isinstance(agg, GradientAggregator) is (name != "famo")
    assert make_aggregator("cagrad", c=0.5).c == 0.5
    assert make_aggregator("pcgrad", seed=3).seed == 3
    assert isinstance(make_aggregator("famo", lr=0.01, weight_decay=0.0), FAMO)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("graddrop", {}, "unknown gradient method 'graddrop'; expected one of pcgrad, cagrad, mgda, imtl, nash"),
        ("cagrad", {"alpha": 0.4}, "unknown option.* alpha for gradient method 'cagrad'; it accepts c$"),
        ("mgda", {"mgda_gn": "l2"}, "'mgda'; it accepts no options"),
        ("famo", {"gamma": 1e-3}, "it accepts lr, weight_decay"),
        ("nash", {"max_norm": 1.0, "niter": 3}, "niter .*it accepts max_norm, update_every, optim_niter"),
        ("cagrad", {"c": -0.1}, "c must be a finite number >= 0, got -0.1"),
        ("upgrad", {"reg_eps": float("nan")}, "reg_eps must be"),
        ("pcgrad", {"seed": 1.5}, "seed must be an int"),
        ("famo", {"lr": 0.0}, "lr must be a finite number > 0"),
    ],
)
def test_make_aggregator_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_aggregator(name, **options)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(0, 4), torch.zeros(2, 3, dtype=torch.long)])
def test_bad_matrix(bad: Tensor) -> None:
    with pytest.raises(ValueError, match="mgda needs"):
        make_aggregator("mgda")(bad)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_weights_dtype_and_direction(name: str) -> None:
    """d = w @ G; float32 and float64 in, the same dtype out, the same values to float32 accuracy."""
    d64, w64 = make_aggregator(name)(THREE)
    d32, w32 = make_aggregator(name)(THREE.float())
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32 and d64.shape == (7,)
    assert torch.allclose(d32.double(), d64, rtol=1e-5, atol=1e-6)
    if name == "pcgrad":
        assert w64 is None and w32 is None
    else:
        assert w64.dtype == torch.float64 and w32.dtype == torch.float32 and w64.shape == (3,)
        assert torch.allclose(w64 @ THREE, d64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_zero_row_and_single_task(name: str) -> None:
    d, w = make_aggregator(name)(ZERO_ROW)
    assert torch.isfinite(d).all() and (w is None or torch.isfinite(w).all())
    d, w = make_aggregator(name)(torch.zeros(3, 5))
    assert torch.equal(d, torch.zeros(5))
    g = THREE[:1]
    d, w = make_aggregator(name)(g)
    if name == "cagrad":  # the natural answer: (g + c g) / (1 + c^2)
        assert close(d, g[0] * 1.4 / 1.16) and close(w, [1.4 / 1.16])
    elif name == "nash":  # a = 1 / ||g||, then clipped to norm 1
        assert close(d, g[0] / g.norm() / (1 + 1e-6), 1e-6)
    else:
        assert close(d, g[0]) and (w is None or close(w, [1.0]))


def test_non_finite_gradients_give_nan() -> None:
    bad = THREE.clone()
    bad[0, 0] = float("inf")
    d, w = make_aggregator("mgda")(bad)
    assert torch.isnan(d).all() and torch.isnan(w).all()


# --------------------------------------------------------------------------------------------------
# PCGrad


def test_pcgrad_two_conflicting() -> None:
    # g_1' = g_1 - (-1 / 2) g_2 = (0.5, 0.5); g_2' = g_2 - (-1 / 1) g_1 = (0, 1); d = the sum.
    d, w = make_aggregator("pcgrad")(CONFLICT)
    assert close(d, [0.5, 1.5]) and w is None


def test_pcgrad_leaves_non_conflicting_unchanged() -> None:
    g = t64([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0], [0.0, 2.0, 0.1]])
    assert (g @ g.T >= 0).all()
    d, _ = make_aggregator("pcgrad")(g)
    assert close(d, g.sum(0))


def test_pcgrad_three_tasks_in_the_drawn_order() -> None:
    """The procedure in P-space with the same draws (projections onto the original g_j, the sum)."""
    g = t64([[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.3, -0.9, 0.5]])
    agg = make_aggregator("pcgrad", seed=7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):  # three calls: the orders differ between calls
        expected = torch.zeros(3, dtype=torch.float64)
        for i in range(3):
            gi = g[i].clone()
            for j in torch.randperm(3, generator=gen).tolist():
                if j != i and gi @ g[j] < 0:
                    gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
            expected += gi
        assert close(agg(g)[0], expected, 1e-12)


def test_pcgrad_state_roundtrip() -> None:
    agg = make_aggregator("pcgrad", seed=1)
    g = t64([[1.0, 0.2, 0.0], [-0.9, 1.0, 0.1], [-0.2, -1.0, 0.4]])
    for _ in range(2):
        agg(g)
    state = roundtrip(agg.state_dict())
    first = [agg(g)[0] for _ in range(5)]
    resumed = make_aggregator("pcgrad", seed=123)  # the seed is replaced by the loaded generator
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed(g)[0]) for a in first)
    assert len({tuple(d.tolist()) for d in first}) > 1  # the orders matter for this G


# --------------------------------------------------------------------------------------------------
# MGDA


@pytest.mark.parametrize(
    ("g", "a1"),
    [
        (t64([[1.0, 0.0], [0.0, 1.0]]), 0.5),  # ((g_2 - g_1) . g_2) / ||g_1 - g_2||^2 = 1 / 2
        (t64([[1.0, 0.0], [2.0, 1.0]]), 1.0),  # 3 / 2, clipped to 1: the min-norm point is g_1
        (t64([[3.0, 1.0], [-1.0, 2.0]]), 6 / 17),  # ((-4, 1) . (-1, 2)) / 17
    ],
)
def test_mgda_two_tasks_closed_form(g: Tensor, a1: float) -> None:
    closed = min(max(float((g[1] - g[0]) @ g[1] / (g[0] - g[1]).square().sum()), 0.0), 1.0)
    assert math.isclose(closed, a1, rel_tol=1e-14)
    d, w = make_aggregator("mgda")(g)
    assert close(w, [a1, 1 - a1]) and close(d, a1 * g[0] + (1 - a1) * g[1])


def test_mgda_hand_value() -> None:
    d, w = make_aggregator("mgda")(t64([[3.0, 1.0], [-1.0, 2.0]]))
    assert close(w, [6 / 17, 11 / 17]) and close(d, [7 / 17, 28 / 17])


def test_mgda_min_norm_point_of_the_hull() -> None:
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d, w = make_aggregator("mgda")(g)
    assert (w >= 0).all() and close(w.sum(), 1.0, 1e-14)
    assert (g @ d >= d @ d - 1e-12).all()  # optimality: every g_k is on the far side of d's plane
    random_points = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((2000,)) @ g
    assert (g.norm(dim=1) >= d.norm()).all() and (random_points.norm(dim=1) >= d.norm() - 1e-12).all()


def test_mgda_zero_row_and_parallel() -> None:
    d, w = make_aggregator("mgda")(ZERO_ROW)
    assert d.norm() < 1e-14 and close(w, [0.0, 1.0, 0.0], 1e-12)  # 0 is in the hull
    d, w = make_aggregator("mgda")(PARALLEL)
    assert close(d, PARALLEL[2], 1e-12)  # the shortest of g, 2g, 0.5g


# --------------------------------------------------------------------------------------------------
# CAGrad


def test_cagrad_hand_value() -> None:
    # Orthogonal, equal norms: w* = (1/2, 1/2) by symmetry, g_w* = g_0, so d = g_0 (1 + c) / (1 + c^2).
    g = t64([[1.0, 0.0], [0.0, 1.0]])
    d, w = make_aggregator("cagrad", c=0.4)(g)
    assert close(d, [0.7 / 1.16, 0.7 / 1.16], 1e-9) and close(w, [0.7 / 1.16, 0.7 / 1.16], 1e-9)
    d, w = make_aggregator("cagrad", c=0.0)(THREE)
    assert close(d, THREE.mean(0)) and close(w, [1 / 3] * 3)


def test_cagrad_maximises_worst_improvement_in_the_ball() -> None:
    """d (1 + c^2) maximises min_k g_k . d' over ||d' - g_0|| <= c ||g_0||, and w* minimises the dual."""
    c = 0.4
    g = t64([[1.0, 0.3], [-0.6, 1.0]])
    d, w = make_aggregator("cagrad", c=c)(g)
    g0, radius = g.mean(0), c * g.mean(0).norm()
    best = d * (1 + c * c)
    value = (g @ best).min()
    assert close((best - g0).norm(), radius, 1e-9)
    angle = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    for r in (0.5, 1.0):  # a grid over the ball
        ring = g0 + r * radius * torch.stack((angle.cos(), angle.sin()), dim=1)
        assert (ring @ g.T).min(dim=1).values.max() <= value + 1e-12
    grid = torch.linspace(0, 1, 100001, dtype=torch.float64)[:, None]  # the dual over the simplex
    gw = grid * g[0] + (1 - grid) * g[1]
    dual = (gw @ g0 + radius * gw.norm(dim=1)).min()
    assert value <= dual + 1e-12 and dual - value < 1e-8  # strong duality at our answer


def test_cagrad_weights_match_formula() -> None:
    d, w = make_aggregator("cagrad", c=0.4)(THREE)
    w_star = w * 1.16 - 1 / 3  # (1/K + lambda w*) (1 + c^2) - 1/K = lambda w*
    assert (w_star >= -1e-12).all()
    g_w = (w_star / w_star.sum()) @ THREE
    g0 = THREE.mean(0)
    assert close(d, (g0 + 0.4 * g0.norm() / g_w.norm() * g_w) / 1.16, 1e-9)


# --------------------------------------------------------------------------------------------------
# IMTL-G


def test_imtl_hand_value() -> None:
    # u_1 = (1, 0), u_2 = (0, 1); d = (a_1, 2 a_2) with a_1 = 2 a_2, a_1 + a_2 = 1.
    d, w = make_aggregator("imtl")(t64([[1.0, 0.0], [0.0, 2.0]]))
    assert close(w, [2 / 3, 1 / 3]) and close(d, [2 / 3, 2 / 3])


@pytest.mark.parametrize("g", [THREE, CONFLICT, ZERO_ROW])
def test_imtl_equal_projections(g: Tensor) -> None:
    d, w = make_aggregator("imtl")(g)
    live = g.norm(dim=1) > 0
    proj = (g[live] @ d) / g[live].norm(dim=1)
    assert close(proj, proj[:1].expand_as(proj), 1e-10) and close(w.sum(), 1.0, 1e-12)
    assert (w[~live] == 0).all()  # a zero row gets no weight


def test_imtl_parallel() -> None:
    # Every a satisfies the condition (u_1 = u_2 = u_3): the pseudo-inverse gives a_{2..K} = 0.
    d, w = make_aggregator("imtl")(PARALLEL)
    assert close(w, [1.0, 0.0, 0.0]) and close(d, PARALLEL[0])


# --------------------------------------------------------------------------------------------------
# Aligned-MTL


def test_aligned_hand_value() -> None:
    # M = diag(1, 4): B = sqrt(1) diag(1, 1/2), a = (1, 1/2): both components get norm 1.
    d, w = make_aggregator("aligned")(t64([[1.0, 0.0], [0.0, 2.0]]))
    assert close(w, [1.0, 0.5]) and close(d, [1.0, 1.0])
    # Rank 1 (g, 2g, 0.5g): B = v v^T, a = v (1 . v) with v = (1, 2, 0.5) / ||.||, d = 3.5 g.
    d, w = make_aggregator("aligned")(PARALLEL)
    assert close(w, [3.5 / 5.25, 7 / 5.25, 1.75 / 5.25]) and close(d, 3.5 * PARALLEL[0])


@pytest.mark.parametrize("g", [THREE, CONFLICT, ZERO_ROW])
def test_aligned_balanced_components(g: Tensor) -> None:
    """B G has equal non-zero singular values sqrt(l_min): the aligned components are orthogonal."""
    gram = (g @ g.T).numpy()
    b = torch.from_numpy(_aligned_balance(gram))
    sv = torch.linalg.svdvals(b @ g)
    lam = torch.linalg.eigvalsh(g @ g.T)
    kept = lam[lam > lam.max() * 1e-6]
    assert close(sv[: len(kept)], [kept.min().sqrt().item()] * len(kept), 1e-9)
    assert (sv[len(kept) :] < 1e-9).all()
    d, w = make_aggregator("aligned")(g)
    assert close(w, b.sum(0), 1e-12)
    if g is ZERO_ROW:
        assert abs(w[1]) < 1e-12


# --------------------------------------------------------------------------------------------------
# UPGrad


def test_upgrad_hand_values() -> None:
    # reg_eps = 0: g_1 -> g_1 + (1/2) g_2 = (0.5, 0.5), g_2 -> g_2 + g_1 = (0, 1); d = their mean,
    # w = ((1, 1/2) + (1, 1)) / 2.
    d, w = make_aggregator("upgrad", reg_eps=0.0)(CONFLICT)
    assert close(d, [0.25, 0.75]) and close(w, [1.0, 0.75])
    # Non-conflicting gradients are in the dual cone already: d = the mean.
    g = t64([[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]])
    assert close(make_aggregator("upgrad", reg_eps=0.0)(g)[0], g.mean(0))
    # TorchJD's defaults move the answer by O(reg_eps).
    assert close(make_aggregator("upgrad")(CONFLICT)[0], [0.25, 0.75], 1e-3)
    # sum ||g_k||^2 below norm_eps: M counts as zero and d is the mean.
    tiny = CONFLICT * 1e-3
    assert close(make_aggregator("upgrad")(tiny)[0], tiny.mean(0), 1e-12)


@pytest.mark.parametrize("g", [THREE, CONFLICT, ZERO_ROW, PARALLEL])
def test_upgrad_no_conflict(g: Tensor) -> None:
    d, w = make_aggregator("upgrad", reg_eps=0.0)(g)
    assert (g @ d >= -1e-12 * g.square().sum()).all()
    d, w = make_aggregator("upgrad")(g)  # with reg_eps: g_k . d >= -reg_eps tr(M) w_k
    assert (g @ d >= -1e-4 * g.square().sum() * w - 1e-12).all()


# --------------------------------------------------------------------------------------------------
# Nash-MTL


def test_nash_missing_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # makes `import cvxpy` raise ImportError
    with pytest.raises(MissingSolver) as info:
        make_aggregator("nash")
    message = str(info.value)
    assert isinstance(info.value, ImportError) and "\n" not in message
    assert (
        "nash" in message and message.endswith(SOLVER_INSTALL) and SOLVER_INSTALL.endswith("requirements-solvers.txt")
    )


@needs_cvxpy
@pytest.mark.parametrize("g", [THREE, t64([[1.0, 0.0], [-0.5, 1.0]]), PARALLEL])
def test_nash_bargaining_solution(g: Tensor) -> None:
    """(G G^T) a = 1 / a for the unnormalised G (the constraints a_k nf (M / nf a)_k >= 1 undo the scaling)."""
    d, w = make_aggregator("nash", max_norm=0.0)(g)
    assert close((g @ g.T) @ w, 1 / w, 1e-6) and close(d, w @ g)


@needs_cvxpy
def test_nash_clipping_and_alpha() -> None:
    agg = make_aggregator("nash")
    d, w = agg(THREE * 10)
    alpha = agg.alpha.to(torch.float64)
    raw = alpha @ (THREE * 10)
    assert close(w, alpha * 1.0 / (raw.norm() + 1e-6), 1e-12) and close(d.norm(), 1 / (1 + 1e-6 / raw.norm()), 1e-9)


@needs_cvxpy
def test_nash_update_every_and_roundtrip() -> None:
    agg = make_aggregator("nash", update_every=2, max_norm=0.0)
    other = THREE + 0.5 * torch.randn(3, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    _, w1 = agg(THREE)
    _, w2 = agg(other)  # reused
    assert torch.equal(w1, w2)
    _, w3 = agg(other)  # recomputed
    assert not torch.allclose(w3, w1) and close((other @ other.T) @ w3, 1 / w3, 1e-6)
    state = roundtrip(agg.state_dict())
    assert state["step"] == 3
    later = [agg(THREE * s)[0] for s in (1.0, 2.0, 0.5)]
    resumed = make_aggregator("nash", update_every=2, max_norm=0.0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed(THREE * s)[0]) for a, s in zip(later, (1.0, 2.0, 0.5)))


@needs_cvxpy
def test_nash_stuck_start_as_official() -> None:
    """CONFLICT has (M 1)_1 = 0: the first linearisation at the start a = 1 is infinite, and the official
    procedure (reproduced) keeps its starting point."""
    _, w = make_aggregator("nash", max_norm=0.0)(CONFLICT)
    assert torch.equal(w, torch.ones(2, dtype=torch.float64))


@needs_cvxpy
def test_nash_zero_row_keeps_previous_weights() -> None:
    agg = make_aggregator("nash", max_norm=0.0)
    _, w = agg(ZERO_ROW)  # infeasible (log 0): the official code keeps the starting weights, ones
    assert close(w, [1.0, 1.0, 1.0])
    _, w1 = agg(THREE)
    _, w2 = agg(ZERO_ROW)
    assert torch.equal(w1, w2)


# --------------------------------------------------------------------------------------------------
# FAMO


def test_famo_weights_and_update_by_hand() -> None:
    famo = make_aggregator("famo", lr=0.025, weight_decay=1e-3)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # z = (1/2, 1/2): w_i = c z_i / L_i with c = 1 / (1/2 + 1/4).
    w = famo.weights(losses)
    assert close(w, [2 / 3, 1 / 3], 1e-7) and w.dtype == torch.float64
    after = torch.tensor([0.5, 1.9], dtype=torch.float64)
    famo.update(losses, after)
    # delta = (log 2, log(2 / 1.9)); softmax Jacobian at z = 1/2: g = (delta_1 - delta_2) / 4 * (1, -1).
    # First Adam step from xi = 0 (weight decay adds 0): m_hat = g, v_hat = g^2, xi = -lr g / (|g| + eps).
    g = (math.log(2) - math.log(2 / 1.9)) / 4
    step = 0.025 * g / (g + 1e-8)
    assert close(famo.logits, [-step, step], 1e-6)
    z1 = 1 / (1 + math.exp(2 * step))  # softmax(-step, step)[0]
    c = 1 / (z1 / 1.0 + (1 - z1) / 2.0)
    assert close(famo.weights(losses), [c * z1, c * (1 - z1) / 2], 1e-6)


def famo_inputs(n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        before = torch.rand(3, generator=gen) + 0.5
        out.append((before, before * (0.8 + 0.3 * torch.rand(3, generator=gen))))
    return out


def test_famo_matches_torch_adam() -> None:
    famo = make_aggregator("famo", lr=0.025, weight_decay=1e-3)
    xi = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3, foreach=False)
    for before, after in famo_inputs(6, 4):
        famo.update(before, after)
        delta = (before + 1e-8).log() - (after + 1e-8).log()
        xi.grad = torch.autograd.grad(torch.softmax(xi, -1), xi, grad_outputs=delta)[0]
        adam.step()
        assert torch.equal(famo.logits, xi.detach())
    assert torch.equal(famo.exp_avg, adam.state[xi]["exp_avg"])
    assert torch.equal(famo.exp_avg_sq, adam.state[xi]["exp_avg_sq"])


def test_famo_state_roundtrip() -> None:
    inputs = famo_inputs(6, 5)
    famo = make_aggregator("famo")
    for before, after in inputs[:3]:
        famo.update(before, after)
    state = roundtrip(famo.state_dict())
    assert state["step"] == 3 and set(state) == {"logits", "exp_avg", "exp_avg_sq", "step"}
    resumed = make_aggregator("famo")
    resumed.load_state_dict(state)
    for before, after in inputs[3:]:
        assert torch.equal(famo.weights(before), resumed.weights(before))
        famo.update(before, after)
        resumed.update(before, after)
    for key in ("logits", "exp_avg", "exp_avg_sq"):
        assert torch.equal(getattr(famo, key), getattr(resumed, key))


def test_famo_gradient_is_the_official_loss_gradient() -> None:
    """sum_i w_i L_i has the gradient of the official sum_i log(D_i) z_i / c."""
    famo = make_aggregator("famo")
    famo.logits = torch.tensor([0.3, -0.2, 0.1])
    theta = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 1.0]])
    losses = (a @ theta) ** 2 + 0.1
    (grad_ours,) = torch.autograd.grad((famo.weights(losses) * losses).sum(), theta, retain_graph=True)
    z = torch.softmax(famo.logits, -1)
    d = losses + 1e-8
    (grad_official,) = torch.autograd.grad((d.log() * z / (z / d).sum().detach()).sum(), theta)
    assert torch.equal(grad_ours, grad_official)


def test_famo_task_count_fixed() -> None:
    famo = make_aggregator("famo")
    famo.weights(torch.ones(3))
    with pytest.raises(ValueError, match="famo was used with 3 tasks, got 2 losses"):
        famo.weights(torch.ones(2))
