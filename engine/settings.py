"""The training scripts' command lines, and the settings a run is trained with.

Every training script's parser is ``training_parser(Family)``: the flag groups below that the family
uses (``Family.arg_groups``), its own flags (``Family.add_args``) and its recipe as defaults
(``Family.defaults``). A flag a family does not use is not offered by its script.

``resolve`` turns the parsed command line into the run's ``Settings``: on ``--resume`` the run's own
settings (engine/runs.py), the default checkpoint and log paths filled in from the family's run
name. ``Settings`` is frozen: nothing changes a run's settings once they are resolved, and what
``args.json`` and the checkpoint record is what the run used.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.afa import DEFAULT_TAU, GRAD_MODES, RELATIONS
from models.fusion import FUSION_INITS

from .gradients import OPTIONS
from .precision import AMP_CHOICES
from .runs import resume_run
from .schedule import SCHEDULES
from .weighting import DEFAULT_DWA_TEMP, DEFAULT_GRADNORM_ALPHA, WEIGHTINGS

if TYPE_CHECKING:
    from families.base import Family

CHECKPOINT_DIR = "weight"  # default --out: weight/<run name>_last.pth
LOG_DIR = "runs"  # default --logdir: runs/<run name>


class Settings(argparse.Namespace):
    """A run's settings under their argparse names; read-only once built.

    ``get(name, default)`` reads a setting that only some families have (e.g. ``init``)."""

    def __init__(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are read-only once resolved (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"settings are read-only once resolved (tried to delete {name!r})")

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def replace(self, **changes: Any) -> Settings:
        """A new Settings with some values changed (this one stays as it is)."""
        return Settings(**{**vars(self), **changes})


# -- flag groups ---------------------------------------------------------------------------------


class CropSize(argparse.Action):
    """``--crop-size S`` (a square) or ``--crop-size H W``: stored as S or [H, W] (a square as its side), so that
    the same crop typed either way is the same setting."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) not in (1, 2) or min(values) < 1:
            parser.error(f"{option_string}: one side or a height and a width (positive), got {values}")
        setattr(namespace, self.dest, values[0] if len(values) == 1 or values[0] == values[1] else list(values))


def _data(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument(
        "--data-root", help="dataset folder (docs/data.md); required, except with --resume, which takes the run's"
    )
    if family.non_square_inputs:
        p.add_argument(
            "--crop-size",
            type=int,
            nargs="+",
            action=CropSize,
            metavar="SIDE",
            help="the network's input size: one side (a square) or a height and a width; SAM's size follows",
        )
    else:
        p.add_argument("--crop-size", type=int, help="the network's (square) input size")


def _holdout(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training data held out for validation (model selection)",
    )


def _model(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument("--fusion", choices=family.fusions, default=family.fusions[0], help=family.fusion_help)
    p.add_argument(
        "--depths",
        type=int,
        nargs=4,
        default=None,
        metavar="N",
        help="bottlenecks per ResNet stage (default 3 4 6 3, ResNet-50; fewer only for smoke tests, "
        "from random weights)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="C",
        help="planes of layer1's bottlenecks, doubled per stage (default 64, ResNet-50; narrower only for "
        "smoke tests, from random weights)",
    )
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help="backbone initialisation: imagenet (torchvision download), PATH to a ResNet-50 state dict, or none",
    )


def _fusion(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument(
        "--fusion-at",
        nargs="+",
        default=None,
        metavar="POINT",
        help="fusion points, e.g. layer3 layer4.1 layer4.* (default: the method's, docs/networks.md)",
    )
    p.add_argument(
        "--fusion-init",
        choices=FUSION_INITS,
        default="reference",
        help="self: AFA layers start passing 0.9 of a branch's own features (cross-stitch's start)",
    )
    p.add_argument("--grad-mode", choices=GRAD_MODES, default="protect", help="AFA gradient mode (models/afa.py)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="adaptive mode's norm-ratio threshold")
    p.add_argument(
        "--protect-tasks",
        nargs="+",
        default=None,
        help="protect mode: tasks whose branch is shielded (default: task 1, as the original code's "
        "latest commit; both tasks as its older commits)",
    )
    p.add_argument(
        "--afa-relation",
        choices=RELATIONS,
        default="tied",
        help="AFA for more than two tasks: tied (the original's self and other maps, exactly the original "
        "at two tasks) or pairwise (a map per ordered pair of tasks)",
    )


def _stages(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument("--init", default=None, help="stage 2: the stage-1 checkpoint (--fusion none) to start from")
    p.add_argument(
        "--init-heads",
        action="store_true",
        help="with --init, also take the task heads (the reference takes the trunks only)",
    )


def _weighting(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument(
        "--weighting",
        choices=WEIGHTINGS,
        default=None,
        help="loss weighting (equal, dwa, uncertainty, gradnorm) or gradient method (pcgrad, cagrad, mgda, imtl, "
        "nash, aligned, upgrad, famo; docs/training.md); default: dwa when the tasks interact, the original recipe; "
        "equal for none",
    )
    p.add_argument("--dwa-temp", type=float, default=DEFAULT_DWA_TEMP, help="DWA temperature")
    p.add_argument("--gradnorm-alpha", type=float, default=DEFAULT_GRADNORM_ALPHA, help="GradNorm asymmetry")
    p.add_argument("--cagrad-c", type=float, default=OPTIONS["cagrad"]["c"], help="CAGrad's c (radius of its ball)")
    p.add_argument(
        "--nash-max-norm",
        type=float,
        default=OPTIONS["nash"]["max_norm"],
        help="Nash-MTL: clip the shared gradient's norm to this (0: no clipping)",
    )
    p.add_argument(
        "--nash-update-every",
        type=int,
        default=OPTIONS["nash"]["update_every"],
        help="Nash-MTL: solve for the weights every N steps, reuse them in between",
    )
    p.add_argument(
        "--famo-lr", type=float, default=OPTIONS["famo"]["lr"], help="FAMO: Adam learning rate of its logits"
    )
    p.add_argument(
        "--famo-weight-decay",
        type=float,
        default=OPTIONS["famo"]["weight_decay"],
        help="FAMO: weight decay of its logits",
    )


def _optim(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument("--epochs", type=int, help="total epochs (with --resume: continue until this many)")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float, help="base learning rate (backbone; groups scale it)")
    p.add_argument(
        "--lr-mult",
        type=json.loads,
        default=None,
        help="JSON multipliers per parameter group, e.g. '{\"fusion\": 100}' (default: per method, docs/training.md)",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup-iters", type=int, default=0, help="linear warm-up iterations")
    p.add_argument("--step-every", type=int, default=0, help="step schedule: iterations between lr steps")
    p.add_argument(
        "--step-epochs", type=int, default=0, help="step schedule: epochs between lr steps (if --step-every is 0)"
    )
    p.add_argument("--step-gamma", type=float, default=0.1, help="step schedule: lr factor at each step")


def _hardware(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="none",
        help="autocast precision (fp16 uses a gradient scaler and needs CUDA)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (fast with AMP)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP ranks")


def _run(p: argparse._ArgumentGroup, family: type[Family]) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help=f"checkpoint path (default {CHECKPOINT_DIR}/<run name>_last.pth); the "
        "best-by-validation model is saved beside it as *_best.pth",
    )
    p.add_argument("--logdir", default=None, help=f"TensorBoard + log.jsonl folder (default {LOG_DIR}/<run name>)")
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint to continue from, exactly and with the run's own settings (docs/training.md)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="a fresh run may replace the run already in --out / --logdir (its files are removed)",
    )
    p.add_argument("--log-every", type=int, default=10, help="iterations between loss/lr scalars")
    p.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="at most N batches per epoch in training and in validation (smoke runs)",
    )
    p.add_argument(
        "--precise-bn",
        type=int,
        default=0,
        metavar="N",
        help="before each validation, re-estimate BatchNorm statistics over N training batches "
        "(helps small-batch or from-scratch runs; 0 = off, the reference recipe)",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="BatchNorm in eval mode while training: running statistics used and kept, affine weights still "
        "learnt (a torchrun run on CPU then equals a one-process run with the same global batch)",
    )


# name -> adds the group's flags; a family lists the names it uses (Family.arg_groups)
ARG_GROUPS: dict[str, Callable[[argparse._ArgumentGroup, type[Family]], None]] = {
    "data": _data,
    "holdout": _holdout,
    "model": _model,
    "fusion": _fusion,
    "stages": _stages,
    "weighting": _weighting,
    "optimisation": _optim,
    "hardware": _hardware,
    "run": _run,
}


def training_parser(family: type[Family], add_help: bool = True) -> argparse.ArgumentParser:
    """The training script's parser: the family's groups, its own flags, its recipe as defaults."""
    parser = argparse.ArgumentParser(description=family.description, add_help=add_help)
    for name in family.arg_groups:
        ARG_GROUPS[name](parser.add_argument_group(name), family)
    family.add_args(parser.add_argument_group(f"{family.kind} tasks"))
    parser.set_defaults(**family.defaults)
    return parser


def resolve(
    args: argparse.Namespace, family: type[Family], explicit: set[str] | None
) -> tuple[Settings, dict[str, Any] | None]:
    """The run's settings and, with ``--resume``, its checkpoint. Default paths come from the family's
    run name: ``weight/<name>_last.pth`` and ``runs/<name>``."""
    values, resume = resume_run(args, family.kind, explicit)
    settings = Settings(**values)
    name = family.run_name(settings)
    return settings.replace(
        out=settings.out or str(Path(CHECKPOINT_DIR) / f"{name}_last.pth"),
        logdir=settings.logdir or str(Path(LOG_DIR) / name),
    ), resume
