"""Gradient methods for multi-task training: how the per-task gradients of the shared parameters become
the one update direction d written into their ``.grad`` before the optimiser step.

Notation: K tasks; g_k (P,) = gradient of task k's loss L_k with respect to the shared parameters,
flattened; G (K, P) = the matrix of rows g_k in task order; M = G G^T (K, K); Delta = the probability
simplex in R^K; g_w = sum_k w_k g_k = w @ G. Every method but FAMO is an ``Aggregator`` called as
``d, w = agg(G)``: d (P,) has G's dtype and device, w (K,) are task weights with d = w @ G (the task
heads' own gradients are weighted by w_k), or None where the method has none (PCGrad).

* ``pcgrad`` (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1).
  For each task i, starting from g_i' = g_i, for every other task j in a random order:
  if g_i' . g_j < 0, g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j (projection onto the *original* g_j).
  d = sum_i g_i' (the SUM, as Algorithm 1; some ports take the mean, a factor 1/K). The order for task i
  is ``torch.randperm(K)`` (skipping i) drawn from the aggregator's own ``torch.Generator`` (option
  ``seed``), whose state is in ``state_dict()``. w is None: d is a combination of the g_k, but the
  task heads keep their own unmodified gradients.
* ``mgda`` (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).
  a = argmin_{a in Delta} ||a @ G||^2 (the min-norm point of the convex hull of the g_k), d = a @ G:
  no gradient normalisation (LibMTL's ``mgda_gn='none'``) and no extra factor K (the CAGrad repository's
  NYUv2 trainer multiplies every method's direction by K "to match the sum loss"; here d is the min-norm
  point itself).
* ``cagrad`` (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021;
  official code Cranial-XIX/CAGrad). g_0 = mean_k g_k, phi = c^2 ||g_0||^2,

      w* = argmin_{w in Delta} g_w . g_0 + sqrt(phi) ||g_w||,
      d  = (g_0 + sqrt(phi) / ||g_w*|| g_w*) / (1 + c^2)        (the official code's rescale=1),

  so d = w @ G with w = (1/K + sqrt(phi) / ||g_w*|| w*) / (1 + c^2). Default c = 0.4 (CAGrad's and
  Nash-MTL's NYUv2 runs; LibMTL uses 0.5).
* ``imtl`` (IMTL-G of Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, in LibMTL's form).
  u_k = g_k / ||g_k||; D rows g_1 - g_k and U rows u_1 - u_k (k = 2..K); a_{2..K} = g_1 U^T (D U^T)^-1,
  a_1 = 1 - sum_{k>=2} a_k; d = a @ G, whose projections d . u_k are equal for all k.
* ``nash`` (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; official code
  AvivNavon/nash-mtl). a > 0 with (M a)_k = 1 / a_k, found as in the official code: M is divided by its
  Frobenius norm nf, and at most ``optim_niter`` (20) convex approximations are solved with cvxpy/ECOS
  (max_iters=100), each linearising the concave part of the objective at the previous iterate, warm
  started from the last call's weights, stopping as the official rule does (iterate change < 1e-6, or a
  residual < 1e-3 that it measures on the normalised M). The constraints a_k nf (M/nf a)_k >= 1 make a
  solve M a = 1/a for the *unnormalised* M. d = a @ G with its norm clipped to ``max_norm`` (1.0) as the
  official code clips the shared parameters' gradient (factor min(1, max_norm / (||d|| + 1e-6)); 0
  disables), and w = that factor times a (the unclipped a is ``agg.alpha``). The weights are recomputed
  every ``update_every`` calls (1) and reused otherwise; the step counter and the last weights are in
  ``state_dict()``. The official procedure's flaw is reproduced: where (M a_start)_k = 0 for some k
  (e.g. g_1 = (1, 0), g_2 = (-1, 1) at the start a = 1) the first linearisation is infinite and the
  start is returned unchanged. cvxpy is an optional extra (``pip install -r requirements-solvers.txt``);
  without it ``make_aggregator('nash')`` raises ``MissingSolver``. The weights are not scale-equivariant
  (a scales as 1 / ||G||): give Nash-MTL unscaled gradients (unscale a GradScaler's first).
* ``aligned`` (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, in
  LibMTL's form). M = V L V^T with ``torch.linalg.eigh`` (LibMTL calls ``torch.symeig``, removed in
  torch 2), eigenvalues above max(L) * K * eps kept (eps = float32's, as LibMTL's ``torch.finfo()``),
  B = sqrt(l_min) V L^-1/2 V^T, a = B 1 (column sums), d = a @ G. B G has all its non-zero singular
  values equal to sqrt(l_min): the balanced components are orthogonal and of equal size.
* ``upgrad`` (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD's
  ``UPGrad``). Each g_i is projected onto the dual cone {x : g_j . x >= 0 for all j}, d = the mean of the
  projections. As TorchJD: M' = M / tr(M) (zero when tr(M) < ``norm_eps``) + ``reg_eps`` I (both 1e-4);
  for each i, v_i = argmin_{v >= e_i / K} v^T M' v; w = sum_i v_i; d = w @ G. Because of reg_eps,
  g_k . d >= -reg_eps tr(M) w_k rather than >= 0 (exactly >= 0 with reg_eps = 0).
* ``famo`` (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023; official code
  Cranial-XIX/FAMO). Losses only, one backward: see ``FAMO``.

Solvers. Every K x K problem is solved on the host in float64 (K is small); the returned d keeps G's
dtype. M itself is accumulated in float64 (G converted in blocks, so no float64 copy of G and no TF32).
MGDA's min-norm point is an exact non-negative least-squares problem: with R^T R = M / tr(M),
min_{u >= 0} ||R u||^2 + (1 - 1^T u)^2 is minimised by u = t a* with a* the min-norm weights (for fixed
direction the optimal t is 1 / (1 + ||a G||^2), after which the objective increases with ||a G||), so
a* = u / sum(u), solved by ``scipy.optimize.nnls`` (Lawson-Hanson active set: exact up to rounding, no
tolerance to choose; the official Frank-Wolfe solver stops when the weights change by < 1e-5). UPGrad's
QPs min_{v >= u} v^T M' v are the NNLS problems min_{s >= 0} ||R s + R u|| with R the Cholesky factor of
M' (v = u + s), the same exact solver (TorchJD uses quadprog, also an exact active-set method).
CAGrad's problem is solved through sqrt(q) = min_{t > 0} q / (2t) + t / 2: for fixed t the minimisation
over w is the min-norm point of the hull of the shifted gradients g_k + (t / sqrt(phi)) g_0 (the
MGDA solver above), and the optimal t = ||g_w*|| is the unique root of ||g_w(t)|| - t, found by
``scipy.optimize.brentq`` to relative accuracy 4 machine epsilons (||g_w(t)|| / t does not increase, so
the root is bracketed by [t_lo, 2] on the trace-normalised scale). The official code calls SLSQP with
its default tolerance (ftol 1e-6) and adds 1e-8 inside square roots, which is scale-dependent; this is
the exact optimum. Nash-MTL keeps the official cvxpy/ECOS procedure, so that its weights are the
official code's.

Zero rows (a task whose shared gradient is exactly zero) never give NaN:
PCGrad never projects onto a zero g_j (its dot products are 0) and a zero g_i stays zero; MGDA's
min-norm point is then 0 (d = 0, weight on the zero task: the gradients are Pareto-stationary); CAGrad
handles it like any row, and when the optimum is g_w* = 0 (0 in the hull and no better point) the ball
term has no direction and d = g_0 / (1 + c^2), the official formula's value at g_w = 0; IMTL-G leaves
zero rows out of the system (their u_k is undefined) and gives them weight 0; Nash-MTL's problem is
then infeasible (log 0, 1 / 0 in the linearisation), and, as the official code, it keeps the previous
weights; Aligned-MTL drops
the zero eigenvalue (weight 0 for that task); UPGrad handles it like any row. An all-zero G gives d = 0.
K = 1 gives d = g_1 with weight 1, except for CAGrad (its formula gives d = (1 + c) / (1 + c^2) g_1) and
Nash-MTL (a = 1 / ||g_1||, the solution of M a = 1 / a, set directly because cvxpy cannot build the
official problem for K = 1; d = g_1 / ||g_1||, then clipped).

Degenerate systems: where IMTL-G's D U^T is singular (two gradients with the same direction, for which
every a satisfies the equal-projection condition) its pseudo-inverse is used (singular values below
1e-10 max_k ||g_k|| dropped), i.e. the minimum-norm a_{2..K}.

Host syncs: one per call, reading M (K x K) to solve the small problem (Nash-MTL's reuse steps read
nothing); the weights go back as a K-vector. A non-finite M (e.g. overflowed AMP gradients) gives a NaN
d and NaN weights, so that a GradScaler skips the step, and leaves the state untouched.

Several processes: all-reduce G (the mean over ranks) and aggregate identically on every rank; per-rank
Gram matrices must not be averaged ((mean G)(mean G)^T is not mean(G G^T)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import brentq, nnls
from torch import Tensor

GRADIENT_METHODS = ("pcgrad", "cagrad", "mgda", "imtl", "nash", "aligned", "upgrad", "famo")

SOLVER_INSTALL = "pip install -r requirements-solvers.txt"

# Elements of G converted to float64 at a time while accumulating M (128 MiB per block): M in float64
# without a float64 copy of all of G, and without TF32 rounding on GPUs that allow it for float32.
_GRAM_BLOCK = 1 << 24
# Aligned-MTL's rank tolerance uses float32's epsilon, as LibMTL's and TorchJD's ``torch.finfo()`` (the
# default dtype), whatever G's dtype: eigenvalues below ~1e-7 max(L) are rounding in float32 gradients.
_ALIGNED_EPS = float(torch.finfo(torch.float32).eps)
# IMTL-G: singular values of D U^T below this times max_k ||g_k|| are zero. D U^T is O(||g||) and is
# computed from a float64 M to ~1e-14 relative; 1e-10 leaves margin while catching exact parallels.
_IMTL_RCOND = 1e-10
# CAGrad, on the trace-normalised scale (sum_k ||g_k||^2 = 1): ||g_0|| below _CAGRAD_TINY means no
# ball; roots ||g_w*|| below the last of _CAGRAD_T_LO mean the optimum is g_w* = 0.
_CAGRAD_TINY = 1e-15
_CAGRAD_T_LO = (1e-6, 1e-9, 1e-12)
# Nash-MTL, as the official code: ECOS iterations per convex approximation, the stopping rule's
# tolerances, and clip_grad_norm_'s 1e-6.
_NASH_ECOS_ITERS = 100
_NASH_RESIDUAL_TOL = 1e-3
_NASH_STEP_TOL = 1e-6
_CLIP_EPS = 1e-6
# FAMO, as the official code: the 1e-8 added to every loss before log and division (b_i = 0), and
# torch.optim.Adam's defaults.
_FAMO_EPS = 1e-8
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class MissingSolver(ImportError):
    """An optional solver package a method needs is not installed."""


# --------------------------------------------------------------------------------------------------
# K x K solvers (float64 numpy on the host)


def _psd_sqrt(gram: np.ndarray) -> np.ndarray:
    """R (K, K) with R^T R = gram; eigenvalues below zero (rounding) count as zero."""
    lam, vec = np.linalg.eigh(gram)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T


def _min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """a in Delta minimising a^T gram a (MGDA's min-norm point), exactly, by NNLS (module docstring)."""
    k = len(gram)
    trace = float(np.trace(gram))
    if not trace > 0:  # G = 0: every point of the hull is 0
        return np.full(k, 1.0 / k)
    a = np.vstack([_psd_sqrt(gram / trace), np.ones((1, k))])  # (K+1, K): [R; 1^T]
    b = np.zeros(k + 1)
    b[-1] = 1.0
    u, _ = nnls(a, b, maxiter=50 * k)
    return u / u.sum()  # u = 0 is never optimal: a small step along any e_k lowers (1 - 1^T u)^2


def _cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """CAGrad's w with d = w @ G (module docstring: the exact optimum via a root in t)."""
    k = len(gram)
    uniform = np.full(k, 1.0 / k)
    trace = float(np.trace(gram))
    if not trace > 0:
        return uniform / (1.0 + c * c)
    m = gram / trace  # scale-free: the optimal w does not depend on ||G||
    s = c * math.sqrt(max(float(uniform @ m @ uniform), 0.0))  # sqrt(phi) = c ||g_0||
    if s <= _CAGRAD_TINY:  # c = 0 or g_0 = 0: no ball, d = g_0 / (1 + c^2)
        return uniform / (1.0 + c * c)

    def inner(t: float) -> tuple[np.ndarray, float]:
        # Hull of g_k + (t / s) g_0: rows of T G with T = I + (t / (s K)) 1 1^T, Gram T M T.
        shift = np.eye(k) + t / (s * k)
        w = _min_norm_weights(shift @ m @ shift)
        return w, math.sqrt(max(float(w @ m @ w), 0.0))  # w and ||g_w||

    def excess(t: float) -> float:
        return inner(t)[1] - t

    for t_lo in _CAGRAD_T_LO:
        if excess(t_lo) > 0:
            break
    else:  # the optimum is g_w* = 0: the ball term has no direction
        return uniform / (1.0 + c * c)
    # ||g_w|| <= max_k ||g_k|| <= 1 on this scale, so excess(2) < 0.
    t = brentq(excess, t_lo, 2.0, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    w, norm = inner(t)
    return (uniform + (s / norm) * w) / (1.0 + c * c)


def _imtl_weights(gram: np.ndarray) -> np.ndarray:
    """IMTL-G's a (LibMTL's formula, written with M: g_i . u_j = M_ij / ||g_j||)."""
    k = len(gram)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    live = np.flatnonzero(norms > 0)
    if live.size == 0:  # G = 0
        return np.full(k, 1.0 / k)
    a = np.zeros(k)
    if live.size == 1:
        a[live[0]] = 1.0
        return a
    gu = gram[np.ix_(live, live)] / norms[live][None, :]  # gu[i, j] = g_i . u_j over the live rows
    g1_u = gu[0, 0] - gu[0, 1:]  # g_1 U^T, (m,)
    d_u = g1_u[None, :] - (gu[1:, :1] - gu[1:, 1:])  # D U^T, (m, m): (g_1 - g_k) . (u_1 - u_j)
    left, sv, right = np.linalg.svd(d_u)
    keep = sv > _IMTL_RCOND * norms.max()
    pinv = (right[keep].T / sv[keep]) @ left[:, keep].T
    rest = g1_u @ pinv
    a[live[1:]] = rest
    a[live[0]] = 1.0 - rest.sum()
    return a


def _aligned_balance(gram: np.ndarray) -> np.ndarray:
    """Aligned-MTL's B (K, K) = sqrt(l_min) V L^-1/2 V^T over the kept eigenpairs (identity if none)."""
    k = len(gram)
    lam, vec = torch.linalg.eigh(torch.from_numpy(gram))
    lam, vec = lam.numpy(), vec.numpy()
    keep = lam > lam.max() * k * _ALIGNED_EPS
    if not keep.any():  # G = 0 (LibMTL fails here; TorchJD returns the identity)
        return np.eye(k)
    lam, vec = lam[keep], vec[:, keep]
    return math.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T


def _upgrad_weights(gram: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """UPGrad's w = sum_i argmin_{v >= e_i / K} v^T M' v, M' normalised and regularised as TorchJD."""
    k = len(gram)
    trace = float(np.trace(gram))
    m = (np.zeros_like(gram) if trace < norm_eps else gram / trace) + reg_eps * np.eye(k)
    try:
        r = np.linalg.cholesky(m).T  # m = R^T R
    except np.linalg.LinAlgError:  # only with reg_eps = 0 and a singular M
        r = _psd_sqrt(m)
    w = np.zeros(k)
    for i in range(k):
        u = np.zeros(k)
        u[i] = 1.0 / k
        s, _ = nnls(r, -(r @ u), maxiter=50 * k)  # min_{s >= 0} ||R (u + s)||
        w += u + s
    return w


# --------------------------------------------------------------------------------------------------
# Aggregators


def _gram64(grads: Tensor) -> Tensor:
    """M = G G^T (K, K) in float64 on G's device."""
    if grads.dtype == torch.float64:
        return grads @ grads.T
    k, p = grads.shape
    block = max(1, _GRAM_BLOCK // k)
    gram = torch.zeros((k, k), dtype=torch.float64, device=grads.device)
    for start in range(0, p, block):  # blocks of columns, not elements: a handful of iterations
        part = grads[:, start : start + block].double()
        gram += part @ part.T
    return gram


def _host_gram(grads: Tensor) -> np.ndarray | None:
    """M on the host (the one sync of a call), or None when it is not finite."""
    gram = _gram64(grads).cpu().numpy()
    return gram if np.isfinite(gram).all() else None


def _check_grads(grads: Tensor, name: str) -> None:
    if not isinstance(grads, Tensor) or grads.dim() != 2 or grads.shape[0] < 1:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise ValueError(f"{name} needs the per-task gradient matrix G of shape (K, P) with K >= 1, got {shape}")
    if not grads.is_floating_point():
        raise ValueError(f"{name} needs a floating-point G, got {grads.dtype}")


class Aggregator:
    """Base of every method: a name, whether it needs per-task gradients, and a (possibly empty) state.

    The state holds plain tensors and Python values only, so that it goes into a checkpoint read with
    ``torch.load(weights_only=True)``; loading it restores the behaviour bit for bit.
    """

    name = ""
    needs_gradients = True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")

    def _check_keys(self, state: Mapping[str, Any], keys: set[str]) -> None:
        if set(state) != keys:
            raise ValueError(f"{self.name} state needs keys {sorted(keys)}, got {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GradientAggregator(Aggregator):
    """A method that maps G (K, P) to (d, w); see the module docstring for each rule."""

    returns_weights = True

    def __call__(self, grads: Tensor) -> tuple[Tensor, Tensor | None]:
        """d (P,) and w (K,) with d = w @ G, or (d, None) where the method has no weights.

        Args:
            grads: G (K, P), float32 or float64 (any floating dtype), rows in task order, K >= 1.
        """
        _check_grads(grads, self.name)
        # torch.tensor copies: the weights never alias state (Nash-MTL returns its stored array).
        w = torch.tensor(self._weights(grads)).to(device=grads.device, dtype=grads.dtype)
        d, w = self._direction(grads, w)
        return d, (w if self.returns_weights else None)

    def _weights(self, grads: Tensor) -> np.ndarray:
        gram = _host_gram(grads)
        if gram is None:
            return np.full(grads.shape[0], np.nan)
        return self._solve(gram)

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _direction(self, grads: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        return w @ grads, w


class PCGrad(GradientAggregator):
    """PCGrad; d = sum of the projected gradients, no weights.

    Done on M: g_i' = sum_j C_ij g_j, so g_i' . g_j = (C M)_ij and the K x K coefficients C carry the
    whole procedure; d = (sum_i C_i) @ G. Projection onto a zero g_j never happens (its dot is 0).

    Args:
        seed: seed of the generator that draws the task orders.
    """

    name = "pcgrad"
    returns_weights = False

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"pcgrad seed must be an int, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        k = len(gram)
        total = np.zeros(k)
        for i in range(k):
            coef = np.zeros(k)
            coef[i] = 1.0
            for j in torch.randperm(k, generator=self.generator).tolist():
                if j == i:
                    continue
                dot = coef @ gram[:, j]  # g_i' . g_j
                if dot < 0:
                    coef[j] -= dot / gram[j, j]  # dot < 0 implies g_j != 0
            total += coef
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_keys(state, {"generator"})
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"


class MGDA(GradientAggregator):
    """MGDA's min-norm point: w in Delta, d = w @ G (no normalisation, no factor K)."""

    name = "mgda"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return _min_norm_weights(gram)


class CAGrad(GradientAggregator):
    """CAGrad with the official rescale=1.

    Args:
        c: radius of the ball around g_0, relative to ||g_0||; c >= 0 (0 gives d = g_0).
    """

    name = "cagrad"

    def __init__(self, c: float = 0.4) -> None:
        if not (c >= 0 and math.isfinite(c)):
            raise ValueError(f"cagrad c must be a finite number >= 0, got {c}")
        self.c = float(c)

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return _cagrad_weights(gram, self.c)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c})"


class IMTLG(GradientAggregator):
    """IMTL-G: d . u_k equal for all tasks, weights summing to 1."""

    name = "imtl"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return _imtl_weights(gram)


class AlignedMTL(GradientAggregator):
    """Aligned-MTL: a = B 1 (LibMTL's column sums), d = a @ G."""

    name = "aligned"

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return _aligned_balance(gram).sum(axis=0)


class UPGrad(GradientAggregator):
    """UPGrad with TorchJD's mean preference vector.

    Args:
        norm_eps: below this trace of M (sum_k ||g_k||^2, absolute) M counts as zero.
        reg_eps: added to the diagonal of the trace-normalised M.
    """

    name = "upgrad"

    def __init__(self, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        for what, v in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"upgrad {what} must be a finite number >= 0, got {v}")
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)

    def _solve(self, gram: np.ndarray) -> np.ndarray:
        return _upgrad_weights(gram, self.norm_eps, self.reg_eps)

    def __repr__(self) -> str:
        return f"UPGrad(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"


def _import_cvxpy(method: str) -> Any:
    try:
        import cvxpy
    except ImportError:
        cvxpy = None
    if cvxpy is None or "ECOS" not in cvxpy.installed_solvers():
        raise MissingSolver(f"{method} needs the optional solver cvxpy with ECOS; install it with: {SOLVER_INSTALL}")
    return cvxpy


class NashMTL(GradientAggregator):
    """Nash-MTL, the official procedure (module docstring).

    Args:
        max_norm: the direction's norm is clipped to this (clip_grad_norm_'s arithmetic); 0 disables.
        update_every: recompute the weights every this many calls, reuse the last ones otherwise.
        optim_niter: at most this many convex approximations per recomputation.
    """

    name = "nash"

    def __init__(self, max_norm: float = 1.0, update_every: int = 1, optim_niter: int = 20) -> None:
        if not (max_norm >= 0 and math.isfinite(max_norm)):
            raise ValueError(f"nash max_norm must be a finite number >= 0 (0: no clipping), got {max_norm}")
        for what, v in (("update_every", update_every), ("optim_niter", optim_niter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"nash {what} must be an int >= 1, got {v!r}")
        self.cp = _import_cvxpy("Nash-MTL ('nash')")
        self.max_norm = float(max_norm)
        self.update_every = update_every
        self.optim_niter = optim_niter
        self.step = 0
        self.prvs_alpha: np.ndarray | None = None  # the last weights; ones (float32, as official) at first
        self._problem: dict[str, Any] | None = None

    @property
    def alpha(self) -> Tensor | None:
        """The last unclipped weights a (M a = 1 / a), or None before the first call."""
        return None if self.prvs_alpha is None else torch.from_numpy(self.prvs_alpha.copy())

    def _build(self, k: int) -> dict[str, Any]:
        # The official _init_optim_problem, term by term (the same expression tree gives ECOS the same
        # problem data). Not DPP (parameter times parameter), hence cvxpy's warning, silenced in _run.
        cp = self.cp
        alpha = cp.Variable(shape=(k,), nonneg=True)
        prvs = cp.Parameter(shape=(k,), value=self.prvs_alpha)
        g = cp.Parameter(shape=(k, k), value=np.eye(k))
        nf = cp.Parameter(shape=(1,), value=np.array([1.0]))
        g_prvs = g @ prvs
        prvs_phi_tag = 1 / prvs + (1 / g_prvs) @ g
        phi_alpha = prvs_phi_tag @ (alpha - prvs)
        g_alpha = g @ alpha
        constraints = [-cp.log(alpha[i] * nf) - cp.log(g_alpha[i]) <= 0 for i in range(k)]
        problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + phi_alpha / nf), constraints)
        return {"alpha": alpha, "prvs": prvs, "gtg": g, "nf": nf, "problem": problem}

    def _run(self, gtg: np.ndarray, nf: float) -> None:
        """The official solve_optimization: updates prvs_alpha."""
        p = self._problem
        p["gtg"].value = gtg
        p["nf"].value = np.array([nf])
        alpha_t = self.prvs_alpha
        for _ in range(self.optim_niter):
            p["alpha"].value = alpha_t
            p["prvs"].value = alpha_t
            try:
                # cvxpy warns that the problem is not DPP, and numpy that 1 / (M alpha) overflows for a zero
                # row (which then raises the ValueError handled below).
                with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                    warnings.filterwarnings("ignore", message=".*not DPP.*")
                    p["problem"].solve(solver=self.cp.ECOS, warm_start=True, max_iters=_NASH_ECOS_ITERS)
            # ECOS failing (SolverError), or infinite problem data (ValueError: a zero row makes
            # 1 / (M alpha) infinite): the official code's bare except, which keeps the previous point.
            except (self.cp.error.SolverError, ValueError):
                p["alpha"].value = p["prvs"].value
            new = p["alpha"].value
            if (
                new is None
                or np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < _NASH_RESIDUAL_TOL
                or np.linalg.norm(new - p["prvs"].value) < _NASH_STEP_TOL
            ):
                break
            alpha_t = new
        if alpha_t is not None:
            self.prvs_alpha = alpha_t

    def _weights(self, grads: Tensor) -> np.ndarray:
        k = grads.shape[0]
        if self.prvs_alpha is None:
            self.prvs_alpha = np.ones(k, dtype=np.float32)
        if len(self.prvs_alpha) != k:
            raise ValueError(f"nash was used with {len(self.prvs_alpha)} tasks, got G with {k} rows")
        if self.step % self.update_every != 0:
            self.step += 1
            return self.prvs_alpha
        gram = _host_gram(grads)
        if gram is None:
            return np.full(k, np.nan)
        self.step += 1
        nf = float(np.linalg.norm(gram))  # Frobenius norm of M
        if nf > 0 and k == 1:  # cvxpy cannot build the K = 1 problem (matmul of scalars); a = 1 / ||g_1||
            self.prvs_alpha = np.array([1.0 / math.sqrt(gram[0, 0])])
        elif nf > 0:  # G = 0 cannot be normalised: keep the previous weights (d = 0 anyway)
            if self._problem is None:
                self._problem = self._build(k)
            self._run(gram / nf, nf)
        return self.prvs_alpha

    def _direction(self, grads: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        if self.max_norm > 0:
            # clip_grad_norm_: factor max_norm / (||d|| + 1e-6), at most 1; stays on the device.
            coef = (self.max_norm / ((w @ grads).norm() + _CLIP_EPS)).clamp(max=1.0)
            w = w * coef
        return w @ grads, w

    def state_dict(self) -> dict[str, Any]:
        alpha = None if self.prvs_alpha is None else torch.from_numpy(self.prvs_alpha.copy())
        return {"step": self.step, "alpha": alpha}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_keys(state, {"step", "alpha"})
        alpha = state["alpha"]
        # dtype kept (float32 ones before the first solve, float64 after): the warm start is bit-exact.
        self.prvs_alpha = None if alpha is None else alpha.detach().cpu().numpy().copy()
        self.step = int(state["step"])
        if self._problem is not None and (
            self.prvs_alpha is None or len(self.prvs_alpha) != self._problem["prvs"].shape[0]
        ):
            self._problem = None

    def __repr__(self) -> str:
        return f"NashMTL(max_norm={self.max_norm}, update_every={self.update_every}, optim_niter={self.optim_niter})"


class FAMO(Aggregator):
    """FAMO: task weights from the losses alone (one backward per step).

    With z = softmax(xi) over learned logits xi (K,) and D_i = L_i + 1e-8 (the official min-loss
    offsets b_i = 0 and its epsilon), the step minimises sum_i z_i log D_i, whose gradient is
    sum_i z_i / D_i g_i; scaled by c = 1 / sum_i z_i / D_i (the official code's normaliser) this is
    d = sum_i w_i g_i with w_i = c z_i / D_i = ``weights(losses)``: back-propagate sum_i w_i L_i.
    After the optimiser step, with the losses of the same batch recomputed without gradients,
    ``update`` gives xi one Adam step (lr, weight decay; betas 0.9, 0.999, eps 1e-8, torch.optim.Adam's
    L2 form and arithmetic) on the gradient J_softmax(xi)^T delta with
    delta_i = log D_i(before) - log D_i(after), exactly as the official ``update``. Losses must be > 0.

    xi is created (zeros, float32, as the official code) at the first call, on the losses' device. The
    official trainers also clip the shared parameters' gradient norm to 1 (``max_norm``); that clipping is
    the caller's, not part of the weights.

    Args:
        lr: Adam's learning rate for xi (the official 0.025).
        weight_decay: Adam's L2 weight decay on xi (gamma; 1e-3 for NYUv2 in the official scripts).
    """

    name = "famo"
    needs_gradients = False

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"famo lr must be a finite number > 0, got {lr}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"famo weight_decay must be a finite number >= 0, got {weight_decay}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        # Empty until the first call fixes K.
        self.logits = torch.zeros(0)
        self.exp_avg = torch.zeros(0)
        self.exp_avg_sq = torch.zeros(0)
        self.step = 0

    def _ready(self, losses: Tensor, what: str) -> Tensor:
        if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.numel() < 1:
            raise ValueError(f"famo {what} must be a 1-D tensor of the K task losses, got {losses!r}")
        k = losses.numel()
        if self.logits.numel() == 0:
            self.logits = torch.zeros(k, device=losses.device)
            self.exp_avg = torch.zeros_like(self.logits)
            self.exp_avg_sq = torch.zeros_like(self.logits)
        elif self.logits.numel() != k:
            raise ValueError(f"famo was used with {self.logits.numel()} tasks, got {k} losses")
        if self.logits.device != losses.device:
            self.logits, self.exp_avg, self.exp_avg_sq = (
                t.to(losses.device) for t in (self.logits, self.exp_avg, self.exp_avg_sq)
            )
        return losses.detach()

    def weights(self, losses: Tensor) -> Tensor:
        """Detached w (K,) = c z_i / D_i in the losses' dtype; back-propagate sum_i w_i L_i.

        Args:
            losses: L (K,), this step's task losses (> 0).
        """
        losses = self._ready(losses, "losses")
        z = F.softmax(self.logits, -1)
        d = losses + _FAMO_EPS
        c = (z / d).sum()
        # d/dL_i of the official loss sum_i log(D_i) z_i / c, in autograd's order: ((1 / c) z_i) / D_i.
        return ((torch.ones_like(z) / c) * z / d).to(losses.dtype)

    @torch.no_grad()
    def update(self, losses_before: Tensor, losses_after: Tensor) -> None:
        """One Adam step on xi after the optimiser step.

        Args:
            losses_before: L (K,) that ``weights`` was given this step.
            losses_after: L (K,) of the same batch after the optimiser step (computed without gradients).
        """
        before = self._ready(losses_before, "losses_before")
        after = self._ready(losses_after, "losses_after")
        delta = (before + _FAMO_EPS).log() - (after + _FAMO_EPS).log()
        with torch.enable_grad():  # the softmax Jacobian by autograd, as the official code
            xi = self.logits.detach().requires_grad_()
            grad = torch.autograd.grad(F.softmax(xi, -1), xi, grad_outputs=delta.to(xi.dtype))[0]
        # torch.optim.Adam's single-tensor step (L2 weight decay, no amsgrad), operation by operation.
        beta1, beta2 = _ADAM_BETAS
        self.step += 1
        if self.weight_decay != 0:
            grad = grad.add(self.logits, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.step)
        step_size = self.lr / (1 - beta1**step)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(_ADAM_EPS)
        self.logits.addcdiv_(self.exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_keys(state, {"logits", "exp_avg", "exp_avg_sq", "step"})
        shapes = {tuple(state[n].shape) for n in ("logits", "exp_avg", "exp_avg_sq")}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"famo state tensors must be 1-D of one length, got shapes {sorted(shapes)}")
        self.logits = state["logits"].detach().clone()
        self.exp_avg = state["exp_avg"].detach().clone().to(self.logits.device)
        self.exp_avg_sq = state["exp_avg_sq"].detach().clone().to(self.logits.device)
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return f"FAMO(lr={self.lr}, weight_decay={self.weight_decay})"


_CLASSES: dict[str, type[Aggregator]] = {
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "mgda": MGDA,
    "imtl": IMTLG,
    "nash": NashMTL,
    "aligned": AlignedMTL,
    "upgrad": UPGrad,
    "famo": FAMO,
}
# The options each method accepts, with their defaults (the constructors' keyword arguments).
OPTIONS: dict[str, dict[str, Any]] = {
    "pcgrad": {"seed": 0},
    "cagrad": {"c": 0.4},
    "mgda": {},
    "imtl": {},
    "nash": {"max_norm": 1.0, "update_every": 1, "optim_niter": 20},
    "aligned": {},
    "upgrad": {"norm_eps": 1e-4, "reg_eps": 1e-4},
    "famo": {"lr": 0.025, "weight_decay": 1e-3},
}


def make_aggregator(name: str, **options: Any) -> Aggregator:
    """The gradient method ``name`` (one of GRADIENT_METHODS) with ``options`` (see OPTIONS).

    Every method but ``famo`` returns a ``GradientAggregator``: ``d, w = agg(G)``. ``famo`` returns a
    ``FAMO`` (``weights(losses)``, ``update(before, after)``). Raises ValueError for an unknown name or
    option, MissingSolver for ``nash`` without cvxpy/ECOS.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown gradient method {name!r}; expected one of {', '.join(GRADIENT_METHODS)}")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        accepted = ", ".join(OPTIONS[name]) or "no options"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for gradient method {name!r}; it accepts {accepted}")
    return _CLASSES[name](**options)
