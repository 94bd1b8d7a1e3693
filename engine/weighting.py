"""Loss weighting: how the per-task losses L_t (t = 1..K) become the one scalar to back-propagate.

* ``equal``: total = sum_t L_t.
* ``dwa``: Dynamic Weight Average (Liu et al., "End-to-End Multi-Task Learning with Attention",
  CVPR 2019). With Lbar_t(e) the epoch-mean training loss of task t in epoch e and a temperature T,

      r_t(e) = Lbar_t(e-1) / Lbar_t(e-2),    lambda_t(e) = K * softmax_t(r_t(e) / T)    for e >= 2,

  lambda_t = 1 in epochs 0 and 1, and total = sum_t lambda_t L_t. A task whose loss fell less
  in the last epoch gets more weight. The weights are fixed for a whole epoch.
* ``uncertainty``: homoscedastic uncertainty (Kendall et al., "Multi-Task Learning Using
  Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018), in LibMTL's form
  with a learned log variance s_t per task:

      total = sum_t L_t / (2 exp(s_t)) + s_t / 2.

* ``gradnorm``: GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
  Balancing in Deep Multitask Networks", ICML 2018). Learned weights w_t (sum K), total =
  sum_t w_t L_t for the network; on the last shared parameters W

      G_t = || grad_W (w_t L_t) ||,   r_t = (L_t / L_t(0)) / mean_t(L_t / L_t(0)),
      L_grad = sum_t | G_t - sg(mean_t(G_t) * r_t^alpha) |,

  where sg is stop-gradient and L_t(0) the losses at the first step. w receives only the
  gradient of L_grad and is renormalised to sum K after each optimiser step.

Every weighting is an ``nn.Module``: its state (loss history, epoch counter, initial losses,
learned parameters) is in ``state_dict()``, so a checkpoint that holds it resumes exactly.
Learned parameters are the module's ``parameters()``, for the trainer to put in their own
parameter group. Nothing in ``combine`` reads a tensor value on the host, so a training step
never waits for the device.

The gradient methods (PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, FAMO; engine/gradients.py)
take the same flag, ``--weighting``: ``GradientMethod`` holds the method and its state, and the training
step does the method's work (engine/method_step.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .gradients import GRADIENT_METHODS, make_aggregator

LOSS_WEIGHTINGS = ("equal", "dwa", "uncertainty", "gradnorm")
WEIGHTINGS = LOSS_WEIGHTINGS + GRADIENT_METHODS  # what --weighting accepts
# The gradient methods' options that a training flag sets: method -> {option: settings name}. The defaults
# are engine.gradients.OPTIONS'; PCGrad's random order is seeded with the run's --seed.
METHOD_FLAGS: dict[str, dict[str, str]] = {
    "pcgrad": {"seed": "seed"},
    "cagrad": {"c": "cagrad_c"},
    "nash": {"max_norm": "nash_max_norm", "update_every": "nash_update_every"},
    "famo": {"lr": "famo_lr", "weight_decay": "famo_weight_decay"},
}

# DWA's temperature in Liu et al. and in the original AFA training scripts.
DEFAULT_DWA_TEMP = 2.0
# GradNorm's asymmetry: Chen et al. use 1.5 for NYUv2 (their 0.12 - 3.0 sweep; larger alpha pulls
# the gradient norms of slow tasks up harder).
DEFAULT_GRADNORM_ALPHA = 1.5
# s_t = log sigma_t^2 starts at -0.5 as in LibMTL: each loss starts with weight e^0.5 / 2 ~ 0.82.
UNCERTAINTY_INIT = -0.5


class LossWeighting(nn.Module):
    """Base: combines per-task losses into the scalar to back-propagate.

    Args:
        tasks: task names, at least two, unique; their order fixes the order of every per-task
            tensor in the state (index i belongs to ``tasks[i]``).
    """

    min_tasks = 2  # weighting between tasks needs tasks to weigh

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if isinstance(tasks, str):  # a str is a Sequence[str] of characters: never what is meant
            raise ValueError(f"tasks must be a sequence of task names, got the string {tasks!r}")
        tasks = list(tasks)
        if len(tasks) < self.min_tasks:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_tasks} tasks, got {len(tasks)}: {tasks}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names must be unique, got {tasks}")
        self.tasks: list[str] = tasks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _stack(self, values: Mapping[str, Any], what: str) -> list[Any]:
        """Values in task order; extra keys (e.g. a ``total``) are ignored, missing ones are an error."""
        missing = [t for t in self.tasks if t not in values]
        if missing:
            raise ValueError(f"{what} lack task(s) {missing}; expected one entry per task of {self.tasks}")
        return [values[t] for t in self.tasks]

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        """Total loss (0-dim) to call ``.backward()`` on.

        Args:
            losses: task name -> 0-dim loss tensor of this step.
            shared: the last shared parameters W; only GradNorm uses them.
        """
        raise NotImplementedError

    def weights(self) -> dict[str, Tensor]:
        """Weight of each task's loss in this step: task -> detached 0-dim tensor (for logging)."""
        raise NotImplementedError

    def end_epoch(self, epoch_means: Mapping[str, float]) -> None:
        """Called once per epoch with the epoch-mean *unweighted* training loss per task."""

    def after_step(self) -> None:
        """Called after ``optimizer.step()``."""

    # The task names go into the state so that a checkpoint of other tasks (or another order, which
    # would silently swap per-task entries) is refused when loaded, not trained on.
    def get_extra_state(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks)}

    def set_extra_state(self, state: Any) -> None:
        tasks = state.get("tasks") if isinstance(state, dict) else None
        if tasks != self.tasks:
            raise ValueError(f"loss weighting state is for tasks {tasks}, this weighting has {self.tasks}")


class EqualWeighting(LossWeighting):
    """total = sum_t L_t; every weight is 1 (also the plain loss of a single-task family)."""

    min_tasks = 1

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        # Not state, but a buffer so that weights() lives on the module's device.
        self.register_buffer("ones", torch.ones(self.num_tasks), persistent=False)

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        return torch.stack(self._stack(losses, "losses")).sum()

    def weights(self) -> dict[str, Tensor]:
        return {t: w for t, w in zip(self.tasks, self.ones.clone())}


class DWA(LossWeighting):
    """Dynamic Weight Average (Liu et al. 2019).

    Args:
        tasks: task names.
        temperature: T > 0; large T flattens the weights towards 1, small T sharpens them.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = DEFAULT_DWA_TEMP) -> None:
        super().__init__(tasks)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"DWA temperature must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)
        k = self.num_tasks
        # Epochs finished so far = index of the epoch being trained.
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        # Epoch means of the last two finished epochs, (2, K): row 0 = e-2, row 1 = e-1. float64 holds
        # the Python floats given to end_epoch exactly, so the weights recomputed after a resume are
        # the same bits.
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        # lambda_t of the current epoch, (K,); 1 until two epochs are finished.
        self.register_buffer("lambdas", torch.ones(k))

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        return (self.lambdas * torch.stack(self._stack(losses, "losses"))).sum()

    def weights(self) -> dict[str, Tensor]:
        return {t: w for t, w in zip(self.tasks, self.lambdas.detach().clone())}

    def end_epoch(self, epoch_means: Mapping[str, float]) -> None:
        means = [float(m) for m in self._stack(epoch_means, "epoch means")]
        # The ratio divides by last epoch's mean: zero, negative or non-finite means leave it undefined
        # (a NaN mean means training has diverged anyway).
        if not all(math.isfinite(m) and m > 0 for m in means):
            raise ValueError(f"DWA needs finite epoch-mean losses > 0, got {dict(zip(self.tasks, means))}")
        # Once per epoch, so reading the history on the host costs nothing worth avoiding; doing the
        # softmax in Python doubles makes the weights independent of the device.
        prev = self.history[1].tolist()
        self.history.copy_(torch.tensor([prev, means], dtype=torch.float64))
        self.epoch += 1
        if int(self.epoch) >= 2:
            r = [m / p for m, p in zip(means, prev)]  # r_t = Lbar_t(e-1) / Lbar_t(e-2)
            top = max(r)  # subtracted before exp for range; softmax is unchanged
            ex = [math.exp((x - top) / self.temperature) for x in r]
            k = self.num_tasks
            self.lambdas.copy_(torch.tensor([k * x / sum(ex) for x in ex]))


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018), LibMTL's form.

    Args:
        tasks: task names.
        init: initial log variance s_t of every task.
    """

    def __init__(self, tasks: Sequence[str], init: float = UNCERTAINTY_INIT) -> None:
        super().__init__(tasks)
        # s_t = log sigma_t^2, (K,). Learning the log keeps sigma^2 = exp(s) positive without a constraint.
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init)))

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        s = self.log_vars
        # L_t / (2 exp(s_t)) + s_t / 2: the s_t / 2 term (log sigma_t) stops s_t from growing without
        # bound to switch the loss off; d/ds_t = -L_t exp(-s_t) / 2 + 1/2, zero at exp(s_t) = L_t.
        return (0.5 * torch.exp(-s) * torch.stack(self._stack(losses, "losses")) + 0.5 * s).sum()

    def weights(self) -> dict[str, Tensor]:
        return {t: w for t, w in zip(self.tasks, 0.5 * torch.exp(-self.log_vars.detach()))}


class GradNorm(LossWeighting):
    """GradNorm (Chen et al. 2018).

    Gradient paths. The network must receive the gradient of sum_t w_t L_t and nothing else; w must
    receive the gradient of L_grad and nothing else. Two choices make that so:

    * G_t = |w_t| * || grad_W L_t ||, with grad_W L_t taken without ``create_graph``. This equals
      || grad_W (w_t L_t) || (w_t is a scalar that does not depend on W) and has the same gradient
      with respect to w_t, but builds no second-order graph: it is cheaper, and L_grad cannot reach
      the network through grad_W L_t.
    * The total returned is sum_t sg(w_t) L_t + (L_grad - sg(L_grad)). Its value is sum_t w_t L_t (the
      second term is exactly zero); one ``backward()`` gives the network d(sum w L)/dtheta (w is
      detached there, L_grad does not depend on the network) and w dL_grad/dw (L_t does not depend on
      w there). Putting w's gradient into the graph rather than writing ``w.grad`` by hand means it
      accumulates like any other gradient, does not care whether ``zero_grad`` runs before or after
      ``combine``, and is scaled and unscaled correctly by a ``GradScaler``.

    Under ``torch.no_grad()`` (evaluation) ``combine`` returns sum_t w_t L_t and neither needs
    ``shared`` nor records L_t(0).

    Args:
        tasks: task names.
        alpha: asymmetry >= 0; 0 asks for equal gradient norms, larger values push the norms of tasks
            that train slower (higher L_t / L_t(0)) up harder.
    """

    def __init__(self, tasks: Sequence[str], alpha: float = DEFAULT_GRADNORM_ALPHA) -> None:
        super().__init__(tasks)
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"GradNorm alpha must be a finite number >= 0, got {alpha}")
        self.alpha = float(alpha)
        k = self.num_tasks
        self.task_weights = nn.Parameter(torch.ones(k))  # w_t, (K,), sum K
        # L_t(0), (K,), recorded at the first training step. Whether it has been recorded is a tensor
        # flag, not a Python bool, so that recording it is a torch.where, not a host read.
        self.register_buffer("initial_losses", torch.zeros(k))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        # G_t of the last step, (K,), for logging and tests; recomputed every step, so not state.
        self.register_buffer("last_grad_norms", torch.zeros(k), persistent=False)

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        loss_vec = torch.stack(self._stack(losses, "losses")).float()  # (K,)
        w = self.task_weights
        weighted = (w.detach() * loss_vec).sum()
        if not torch.is_grad_enabled():
            return weighted
        if shared is None:
            raise ValueError(
                "GradNorm needs the shared parameters: call combine(losses, shared=[last shared layer's parameters])"
            )
        shared = list(shared)
        if not shared:
            raise ValueError("GradNorm needs at least one shared parameter, got an empty list")

        norms = []
        for t, loss in zip(self.tasks, self._stack(losses, "losses")):
            # retain_graph: the same graph is back-propagated again, by the next task and by backward().
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            grads = [g for g in grads if g is not None]
            if not grads:
                raise ValueError(f"task {t!r}'s loss does not depend on the shared parameters given to GradNorm")
            norms.append(torch.sqrt(sum(g.float().square().sum() for g in grads)))
        grad_norms = w.abs() * torch.stack(norms)  # G_t, (K,); differentiable in w only

        with torch.no_grad():
            self.initial_losses.copy_(torch.where(self.initialised, self.initial_losses, loss_vec))
            self.initialised.fill_(True)
            self.last_grad_norms.copy_(grad_norms)
            ratio = loss_vec / self.initial_losses  # L_t / L_t(0), the inverse training rate
            rel = ratio / ratio.mean()  # r_t
            target = grad_norms.mean() * rel.pow(self.alpha)  # constant: Chen et al. do not differentiate it
        gn_loss = (grad_norms - target).abs().sum()
        return weighted + (gn_loss - gn_loss.detach())

    def weights(self) -> dict[str, Tensor]:
        # clone: after_step rescales w in place, and the logged values must stay what this step used.
        return {t: w for t, w in zip(self.tasks, self.task_weights.detach().clone())}

    @torch.no_grad()
    def after_step(self) -> None:
        # w <- K w / sum w: only the ratios between weights are learned; the fixed sum keeps the
        # effective learning rate of the network from drifting with the weights' scale.
        w = self.task_weights
        w.mul_(self.num_tasks / w.sum())


def build_weighting(
    name: str,
    tasks: Sequence[str],
    *,
    dwa_temp: float = DEFAULT_DWA_TEMP,
    gradnorm_alpha: float = DEFAULT_GRADNORM_ALPHA,
) -> LossWeighting:
    """The loss weighting ``name`` (one of WEIGHTINGS) for ``tasks``; hyperparameters not used by
    ``name`` are ignored."""
    if name == "equal":
        return EqualWeighting(tasks)
    if name == "dwa":
        return DWA(tasks, temperature=dwa_temp)
    if name == "uncertainty":
        return UncertaintyWeighting(tasks)
    if name == "gradnorm":
        return GradNorm(tasks, alpha=gradnorm_alpha)
    raise ValueError(f"unknown loss weighting {name!r}; expected one of {', '.join(LOSS_WEIGHTINGS)}")


class GradientMethod(LossWeighting):
    """A gradient method of engine/gradients.py (PCGrad, CAGrad, MGDA, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad,
    FAMO) in the place of a loss weighting: it holds the method (whose state, e.g. Nash-MTL's step counter
    and last weights, FAMO's logits and their optimiser, PCGrad's random generator, goes into the
    checkpoint with this module's) and the task weights the method gave last (``last``, ones before the
    first step and for PCGrad, which has none). The training step does the work (engine/method_step.py):
    these methods do not combine losses into one scalar.

    Args:
        tasks: task names (at least two).
        name: one of ``engine.gradients.GRADIENT_METHODS``.
        options: the method's options (``engine.gradients.OPTIONS[name]``).
    """

    def __init__(self, tasks: Sequence[str], name: str, **options: Any) -> None:
        super().__init__(tasks)
        self.method = name
        self.aggregator = make_aggregator(name, **options)
        self.register_buffer("last", torch.ones(self.num_tasks))

    @property
    def needs_gradients(self) -> bool:
        """Whether the step must take each task's gradient (all but FAMO)."""
        return self.aggregator.needs_gradients

    @property
    def reports_weights(self) -> bool:
        """Whether the method has task weights to log (all but PCGrad)."""
        return getattr(self.aggregator, "returns_weights", True)

    def combine(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor] | None = None) -> Tensor:
        raise RuntimeError(
            f"{self.method} is a gradient method: its step (engine/method_step.py) combines the "
            "tasks, not a weighted sum of losses"
        )

    def weights(self) -> dict[str, Tensor]:
        return {t: w for t, w in zip(self.tasks, self.last.detach())}

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "method": self.method, "aggregator": self.aggregator.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        if state.get("method") != self.method:
            raise ValueError(f"loss weighting state is for {state.get('method')!r}, this run uses {self.method!r}")
        self.aggregator.load_state_dict(state["aggregator"])
