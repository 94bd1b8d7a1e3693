"""Training-step and input-pipeline benchmark for the AFANet networks.

Times the training loop's own step (engine.step.TrainStep: forward, the family's losses on random
targets, backward, SGD momentum 0.9 over ``model.param_groups``) of each family's networks
(families/: the family builds the batch, its recipe's settings the losses), every method
(``--fusions``), in the chosen precision, memory format and execution mode; and, with
``--pipeline``, the input pipeline alone (the family's dataset + training transform + DataLoader, on
the family's synthetic set unless a folder is given).

    python bench.py --batch-size 8 2                       # CPU: image b8 and pixel b2 at the recipes' crops
    python bench.py --amp bf16 --channels-last             # the fast CPU training mode
    python bench.py --amp none bf16 --reference AFANet     # side by side with the original code (a clone)
    python bench.py --device cuda --amp bf16 --channels-last --compile --batch-size 32 16
    python bench.py --pipeline --workers 2                 # input pipeline on synthetic data
    python bench.py --pipeline --data-root datasets/nyuv2 datasets/adience    # one folder per --kinds entry

Per configuration it reports the minimum and median of ``--steps`` timed steps after ``--warmup``
untimed ones (minimum over ``--rounds`` repetitions), images per second, the step's FLOPs
(counted once with torch.utils.flop_counter.FlopCounterMode), the achieved FLOP/s against a
matrix-multiply peak measured here on the same device and dtype, and peak memory (CUDA: the
allocator's peak for that configuration; CPU: the process's peak RSS so far, which only grows:
run one configuration per process to read it per configuration).

``--reference DIR`` takes a checkout of the original zhenshen-mla/AFANet code (DIR or DIR/models
holds layer_afa.py, net_image_resnet.py, net_image_afalayer.py, net_pixel_deeplab.py,
net_pixel_afalayer.py). Those files are imported at run time, never copied, and the original
network's fp32 eager NCHW step is timed in the same process (same batch, losses and optimiser);
the report gives speed ratios original time / our time (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.gradients import GRADIENT_METHODS, MissingSolver
from engine.method_step import make_step
from engine.precision import AMP_DTYPES, grad_scaler
from engine.sampler import SeededDataset
from engine.settings import Settings
from engine.step import TrainStep
from engine.weighting import WEIGHTINGS, GradientMethod, build_weighting
from families import FAMILIES, family
from models import build_model
from models.fusion import FUSIONS
from models.multitask import ARCHITECTURES
from models.series import SERIES_FUSIONS
from tools import original
from tools.original import LATEST_FILES

PRECISIONS = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}  # --amp value -> its name in labels and --modes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=list(FAMILIES),
        default=list(ARCHITECTURES),
        help="families whose networks to time (default: the two-branch ones, image and pixel)",
    )
    p.add_argument(
        "--fusions",
        nargs="+",
        choices=FUSIONS + SERIES_FUSIONS,
        default=list(FUSIONS),
        help="methods to time (docs/networks.md); each family times those it has",
    )
    p.add_argument(
        "--grad-mode",
        default="protect",
        choices=("protect", "joint", "adaptive"),
        help="AFA gradient mode of our fused networks (the original's default is protect)",
    )
    p.add_argument(
        "--batch-size",
        nargs="+",
        type=int,
        default=None,
        help="batch size, one value for all kinds or one per --kinds entry (default: the family's recipe)",
    )
    p.add_argument(
        "--input-size",
        nargs="+",
        type=int,
        default=None,
        help="square input side, one value or one per --kinds entry (default: the recipe's crop size)",
    )
    p.add_argument(
        "--depths",
        type=int,
        nargs=4,
        default=None,
        metavar="N",
        help="bottlenecks per ResNet stage (default ResNet-50; fewer for quick checks)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="C",
        help="planes of layer1's bottlenecks (default 64, ResNet-50; narrower for quick checks)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--amp",
        nargs="+",
        choices=tuple(PRECISIONS),
        default=["none"],
        help="precision(s): none = fp32, bf16 = bf16 autocast, fp16 = fp16 autocast + GradScaler",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument(
        "--modes",
        nargs="+",
        default=None,
        metavar="MODE",
        help="exact precision/layout combinations instead of --amp x --channels-last, e.g. "
        "'fp32 bf16+cl' (precision fp32|bf16|fp16, '+cl' = channels_last)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network (compile time is not timed)")
    p.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 in fp32 matmuls and convolutions")
    p.add_argument(
        "--flush-denormal",
        action="store_true",
        help="CPU: flush subnormal floats to zero (FTZ/DAZ). The AFA softmax weights saturate and "
        "make subnormal features, which x86 handles slowly in fp32 (bf16 kernels flush anyway)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration and round")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole sequence of configurations; times are pooled (helps with a busy machine)",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the matmul peak")
    p.add_argument(
        "--reference",
        default=None,
        metavar="DIR",
        help="checkout of the original AFANet code: also time its fp32 eager step and report ratios",
    )
    p.add_argument("--no-steps", action="store_true", help="skip the training-step benchmark")
    p.add_argument(
        "--weightings",
        nargs="+",
        choices=WEIGHTINGS,
        default=["equal"],
        metavar="W",
        help="time the step with each loss weighting or gradient method (pcgrad, nash, ...) beside equal, "
        "and print each one's step time over equal's (fusions without shared parameters: equal only)",
    )
    p.add_argument("--pipeline", action="store_true", help="also time the input pipeline alone")
    p.add_argument(
        "--data-root",
        nargs="+",
        default=None,
        help="--pipeline: dataset folders, one per --kinds entry (default: each family's synthetic set, "
        "written to a temporary folder)",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for --pipeline")
    p.add_argument("--pipeline-batches", type=int, default=40, help="timed batches per dataset for --pipeline")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--seed", type=int, default=0)
    return p


# -- one training step -----------------------------------------------------------------------


@dataclass
class StepConfig:
    kind: str
    fusion: str
    batch: int
    size: int
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    impl: str = "ours"  # 'ours' or 'original'
    grad_mode: str = "protect"
    depths: list[int] | None = None
    width: int | None = None
    weighting: str = "equal"  # a loss weighting or a gradient method (--weightings)

    @property
    def label(self) -> str:
        prec = PRECISIONS[self.amp]
        mode = ("CL" if self.channels_last else "NCHW") + (" compile" if self.compile else "")
        method = "" if self.weighting == "equal" else f"+{self.weighting}"
        return f"{self.kind}/{self.fusion}{method} {self.impl} {prec} {mode}"


def recipe(kind: str, **changes: Any) -> Settings:
    """The family's training settings: its parser's defaults (the recipe), with ``changes``."""
    return Settings(**{**vars(family(kind).get_args_parser().parse_args([])), **changes})


def random_batch(
    model_config: dict[str, Any], batch: int, device: torch.device, channels_last: bool, seed: int = 0
) -> dict[str, Tensor]:
    """The family's random training batch for the network (families/: inputs and valid targets)."""
    out = family(model_config["kind"]).random_batch(model_config, batch, torch.Generator().manual_seed(seed))
    out = {k: v.to(device) for k, v in out.items()}
    if channels_last:
        out = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in out.items()}
    return out


def optimizer_kwargs(device: torch.device) -> dict[str, Any]:
    # As engine/setup.py: one fused kernel on CUDA, multi-tensor (foreach) updates on CPU.
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def build_ours(cfg: StepConfig, device: torch.device) -> tuple[nn.Module, list[dict[str, Any]]]:
    options = {"input_size": cfg.size, **{k: v for k, v in (("depths", cfg.depths), ("width", cfg.width)) if v}}
    grad_mode = {"grad_mode": cfg.grad_mode} if cfg.kind in ARCHITECTURES else {}
    model = build_model(cfg.kind, cfg.fusion, **grad_mode, **options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, model.param_groups(0.01)


class _DictOutputs(nn.Module):
    """The original networks return a tuple of task outputs: name them, as ours do."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.names, self.model(x)))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    kind: str,
    amp: str,
    device: torch.device,
    outputs: tuple[str, ...] | None = None,
    weighting: str = "equal",
) -> TrainStep:
    """The training loop's own step on the network, with the family's losses (its recipe's settings)
    combined by ``weighting`` (a loss weighting or a gradient method, with its defaults). ``outputs``
    names the entries of a tuple-returning network (the original code) so that the same step applies."""
    net = _DictOutputs(model, outputs) if outputs is not None else model
    tasks = list(outputs) if outputs is not None else list(model.tasks)
    method = GradientMethod(tasks, weighting) if weighting in GRADIENT_METHODS else build_weighting(weighting, tasks)
    return make_step(
        net,
        family(kind)(recipe(kind)),
        optimizer,
        method.to(device),
        scaler=grad_scaler(amp, device),
        amp=amp,
        device=device,
    )


def time_steps(
    step: Callable[[dict[str, Tensor]], None],
    batch: dict[str, Tensor],
    warmup: int,
    steps: int,
    device: torch.device,
    cpu_share: list[float] | None = None,
) -> list[float]:
    """Seconds per step for ``steps`` steps after ``warmup``; CUDA steps are timed with events
    (one synchronisation at the end, none between steps). On CPU, ``cpu_share`` receives each
    step's CPU time / (wall time x threads): well below 1 means other processes took the cores."""
    for _ in range(warmup):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
        for i in range(steps):
            step(batch)
            events[i + 1].record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
    times = []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        step(batch)
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - t0)
        if cpu_share is not None:  # CPU seconds this process got / (wall seconds x threads)
            cpu_share.append((c1 - c0) / ((t1 - t0) * torch.get_num_threads()))
    return times


def count_flops(step: Callable[[dict[str, Tensor]], None], batch: dict[str, Tensor]) -> int:
    """FLOPs of one training step (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """Best FLOP/s of a square matmul on ``device`` in ``dtype`` (the attainable peak the
    step's achieved FLOP/s is compared with)."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# -- the original code (optional) -------------------------------------------------------------


def import_original(path: str | Path) -> Path:
    """The checkout of the original code, checked to hold its latest networks (SystemExit otherwise)."""
    try:
        for name in LATEST_FILES:
            original.import_original(path, name)
    except original.OriginalCodeError as e:
        raise SystemExit(f"--reference {e}") from None
    return Path(path)


def build_original(root: Path, kind: str, fusion: str, size: int) -> nn.Module:
    """The original network at full depth with random weights (tools/original.py)."""
    return original.build_original(root, kind, fusion, size)


def original_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The original training scripts' groups: the parameters its ``get_<m>x_lr_params`` accessors return
    at m times the rate (image AFA x1000, pixel heads x10), everything else at 1x (the 4fabc70 baselines
    have no accessors; the groups do not change the step's cost)."""
    lr, groups, taken = 0.01, [], set()
    for mult in (1, 10, 1000):
        accessor = getattr(model, f"get_{mult}x_lr_params", None)
        params = [p for p in accessor() if id(p) not in taken] if accessor is not None else []
        if params:
            groups.append({"params": params, "lr": lr * mult})
            taken.update(id(p) for p in params)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return groups + ([{"params": rest, "lr": lr}] if rest else [])


# -- running the configurations ----------------------------------------------------------------


@dataclass
class StepResult:
    config: dict[str, Any]
    label: str
    times_s: list[float] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)  # CPU only: see time_steps
    flops: int | None = None
    peak_memory_bytes: int | None = None
    min_s: float = 0.0
    median_s: float = 0.0
    images_per_s: float = 0.0
    achieved_flops_per_s: float | None = None
    peak_fraction: float | None = None
    best_step_cpu_share: float | None = None
    error: str | None = None

    def finish(self, batch: int, peak: float | None) -> None:
        self.min_s, self.median_s = min(self.times_s), statistics.median(self.times_s)
        self.images_per_s = batch / self.median_s
        if self.cpu_share:
            self.best_step_cpu_share = self.cpu_share[self.times_s.index(self.min_s)]
        if self.flops:
            self.achieved_flops_per_s = self.flops / self.min_s
            self.peak_fraction = self.achieved_flops_per_s / peak if peak else None


def run_config(
    cfg: StepConfig,
    device: torch.device,
    args: argparse.Namespace,
    mods: Path | None,
    flops_cache: dict[tuple, int],
    cpu_share: list[float],
) -> tuple[list[float], int | None, int]:
    """Build, warm up and time one configuration; returns (step times, FLOPs, peak memory)."""
    if cfg.impl == "ours":
        model, groups = build_ours(cfg, device)
        outputs = None
    else:
        model = build_original(mods, cfg.kind, cfg.fusion, cfg.size).to(device)
        groups, outputs = original_param_groups(model), tuple(ARCHITECTURES[cfg.kind].tasks)
    model.train()
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9, **optimizer_kwargs(device))
    config = (
        model.config.to_dict()
        if outputs is None
        # the original: our default config of its kind
        else {"kind": cfg.kind, "input_size": cfg.size, "tasks": dict(ARCHITECTURES[cfg.kind].tasks)}
    )
    batch = random_batch(config, cfg.batch, device, cfg.channels_last, args.seed)
    flops = None
    key = (cfg.impl, cfg.kind, cfg.fusion, cfg.batch, cfg.size, cfg.weighting)
    if not args.no_flops:
        if key not in flops_cache:  # counted eagerly: FLOPs do not depend on precision or layout
            flops_cache[key] = count_flops(
                train_step(model, optimizer, cfg.kind, cfg.amp, device, outputs, cfg.weighting), batch
            )
        flops = flops_cache[key]
    net = torch.compile(model) if cfg.compile else model
    step = train_step(net, optimizer, cfg.kind, cfg.amp, device, outputs, cfg.weighting)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(
        step,
        batch,
        max(args.warmup, 2 if cfg.compile else 0),
        args.steps,
        device,
        cpu_share if device.type == "cpu" else None,
    )
    memory = peak_memory_bytes(device)
    del model, net, optimizer, step, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, flops, memory


def step_configs(args: argparse.Namespace, mods: Path | None) -> tuple[list[StepConfig], list[str]]:
    configs, notes = [], []
    for i, kind in enumerate(args.kinds):
        batch, size = batch_and_size(args, i, kind)
        fusions = [f for f in args.fusions if f in family(kind).fusions]
        if len(fusions) < len(args.fusions):
            notes.append(
                f"{kind}: {', '.join(f for f in args.fusions if f not in fusions)} not timed (its methods: "
                f"{', '.join(family(kind).fusions)})"
            )
        for fusion in fusions:
            if mods is not None and (kind, fusion) in original.NETWORK_FILES:
                configs.append(StepConfig(kind, fusion, batch, size, impl="original"))
            # every weighting beside equal, where the tasks share parameters to weigh them on
            combines = kind in ARCHITECTURES and fusion != "none"
            weightings = list(dict.fromkeys(["equal", *args.weightings])) if combines else ["equal"]
            if not combines and set(args.weightings) - {"equal"}:
                notes.append(f"{kind}/{fusion}: timed with equal only (no parameters shared between tasks)")
            for amp, channels_last in modes(args):
                for weighting in weightings:
                    configs.append(
                        StepConfig(
                            kind,
                            fusion,
                            batch,
                            size,
                            amp,
                            channels_last,
                            args.compile,
                            grad_mode=args.grad_mode,
                            depths=args.depths,
                            width=args.width,
                            weighting=weighting,
                        )
                    )
    return configs, notes


def batch_and_size(args: argparse.Namespace, i: int, kind: str) -> tuple[int, int]:
    """The --kinds entry i's batch size and input side: given, or the family's recipe."""
    settings = recipe(kind)
    return (
        _per_kind(args.batch_size, i, settings.batch_size, "--batch-size", args.kinds),
        _per_kind(args.input_size, i, settings.crop_size, "--input-size", args.kinds),
    )


def modes(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(amp, channels_last) pairs from --modes, or --amp x --channels-last."""
    if not args.modes:
        return [(amp, args.channels_last) for amp in args.amp]
    names = {v: k for k, v in PRECISIONS.items()}
    out = []
    for m in args.modes:
        prec, _, layout = m.lower().partition("+")
        if prec not in names or layout not in ("", "cl"):
            raise SystemExit(f"--modes: {m!r} is not PRECISION[+cl] with PRECISION one of fp32, bf16, fp16")
        out.append((names[prec], layout == "cl"))
    return out


def _per_kind(values: list[int] | None, i: int, default: int, flag: str, kinds: list[str]) -> int:
    if values is None:
        return default
    if len(values) not in (1, len(kinds)):
        raise SystemExit(f"{flag}: give one value or one per --kinds entry ({len(kinds)}), got {values}")
    return values[0] if len(values) == 1 else values[i]


def ratios(results: list[StepResult]) -> list[dict[str, Any]]:
    """Speed ratios from the fastest steps: vs the original's fp32 eager step of the same kind and
    fusion (original_min / our_min, > 1 = ours faster), AFA cost (afa_min / none_min of the same
    implementation and mode, < 1.05 = AFA layers nearly free), and each weighting's or gradient
    method's cost (its min / equal's min, same network and mode)."""
    out = []
    done = [r for r in results if r.error is None and r.times_s]
    orig = {(r.config["kind"], r.config["fusion"]): r for r in done if r.config["impl"] == "original"}
    for r in done:
        c = r.config
        o = orig.get((c["kind"], c["fusion"]))
        if c["impl"] == "ours" and o is not None:
            out.append({"what": f"{r.label} vs original fp32 NCHW", "speedup": o.min_s / r.min_s})
        if c["fusion"] == "afa" and c["weighting"] == "equal":
            pair = [s for s in done if s.config == {**c, "fusion": "none"}]
            if pair:
                out.append({"what": f"{r.label}: afa / none step time", "afa_over_none": r.min_s / pair[0].min_s})
        if c["weighting"] != "equal":
            pair = [s for s in done if s.config == {**c, "weighting": "equal"}]
            if pair:
                what = f"{r.label}: {c['weighting']} / equal step time"
                out.append({"what": what, "over_equal": r.min_s / pair[0].min_s})
    return out


def run_steps(
    args: argparse.Namespace, device: torch.device
) -> tuple[list[StepResult], dict[str, float], list[dict[str, Any]], list[str]]:
    mods = import_original(args.reference) if args.reference else None
    configs, notes = step_configs(args, mods)
    peaks: dict[str, float] = {}
    if not args.no_flops:
        for amp in sorted({c.amp for c in configs}):
            peaks[amp] = matmul_peak(device, AMP_DTYPES[amp])
    results = [StepResult(asdict(c), c.label) for c in configs]
    flops_cache: dict[tuple, int] = {}
    for rnd in range(args.rounds):
        for cfg, res in zip(configs, results):
            if res.error is not None:
                continue
            print(
                f"[round {rnd + 1}/{args.rounds}] {cfg.label} b{cfg.batch} @{cfg.size} ...", file=sys.stderr, flush=True
            )
            try:
                times, res.flops, mem = run_config(cfg, device, args, mods, flops_cache, res.cpu_share)
            # e.g. out of memory, an unsupported dtype on this device, a method's missing solver
            except (RuntimeError, ValueError, MissingSolver) as e:
                res.error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            res.times_s += times
            res.peak_memory_bytes = max(res.peak_memory_bytes or 0, mem)
    for amp in peaks:  # again: a busy machine at the start must not lower the peak
        peaks[amp] = max(peaks[amp], matmul_peak(device, AMP_DTYPES[amp]))
    for cfg, res in zip(configs, results):
        if res.times_s:
            res.finish(cfg.batch, peaks.get(cfg.amp))
    return results, peaks, ratios(results), notes


# -- input pipeline -----------------------------------------------------------------------------


def time_loader(
    dataset: torch.utils.data.Dataset, batch: int, workers: int, batches: int, device: torch.device
) -> dict[str, Any]:
    """Samples per second through a DataLoader like the trainer's (persistent workers, pinned
    memory and non-blocking copies on CUDA); the first batches (worker start-up) are not timed."""
    from torch.utils.data import DataLoader, RandomSampler

    warm = max(2, 2 * workers)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=(warm + batches) * batch, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    it = iter(loader)
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if isinstance(v, Tensor)}
        n += next(iter(b.values())).shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    del it, loader
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def run_pipeline(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Each family's training set and transform (its recipe's settings at the benchmark's input size) through
    a DataLoader, as the training loop reads it (SeededDataset: per-sample augmentation seeds)."""
    if args.data_root and len(args.data_root) != len(args.kinds):
        raise SystemExit(f"--data-root: one folder per --kinds entry ({len(args.kinds)}), got {len(args.data_root)}")
    out = []
    with tempfile.TemporaryDirectory(prefix="afa_bench_") as tmp:
        for i, kind in enumerate(args.kinds):
            batch, size = batch_and_size(args, i, kind)
            root = args.data_root[i] if args.data_root else None
            if root is None:
                print(f"pipeline {kind}: writing the family's synthetic set in {tmp} ...", file=sys.stderr, flush=True)
                root = family(kind).write_synthetic(Path(tmp) / kind)
            data = family(kind)(recipe(kind, data_root=str(root), crop_size=size)).datasets()
            source = (
                f"{'synthetic ' if not args.data_root else ''}{type(data.train).__name__} training split "
                f"({len(data.train)} samples), {type(data.train_transform).__name__}({size})"
            )
            print(f"pipeline {kind}: {source}, {args.workers} workers ...", file=sys.stderr, flush=True)
            ds = SeededDataset(data.train, data.train_transform, args.seed)
            r = time_loader(ds, batch, args.workers, args.pipeline_batches, device)
            out.append({"kind": kind, "source": source, "workers": args.workers, "batch": batch, "size": size, **r})
    return out


# -- report ------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x / scale, spec)


def table(
    results: list[StepResult],
    peaks: dict[str, float],
    rat: list[dict[str, Any]],
    pipeline: list[dict[str, Any]],
    notes: list[str],
) -> str:
    lines = []
    if results:
        head = (
            f"{'configuration':<36} {'batch':>5} {'size':>4} {'min s':>7} {'median s':>8} {'img/s':>7} "
            f"{'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>6} {'peak mem':>9} {'cpu':>4}"
        )
        lines += [head, "-" * len(head)]
        for r in results:
            c = r.config
            if r.error:
                lines.append(f"{r.label:<36} {c['batch']:>5} {c['size']:>4}  failed: {r.error}")
                continue
            lines.append(
                f"{r.label:<36} {c['batch']:>5} {c['size']:>4} {r.min_s:>7.3f} {r.median_s:>8.3f} "
                f"{r.images_per_s:>7.2f} {_fmt(r.flops, '7.1f', 1e9)} {_fmt(r.achieved_flops_per_s, '8.1f', 1e9)} "
                f"{_fmt(r.peak_fraction and 100 * r.peak_fraction, '6.1f')} "
                f"{_fmt(r.peak_memory_bytes, '7.2f', 2**30)}GiB {_fmt(r.best_step_cpu_share, '4.2f')}"
            )
        if peaks:
            lines.append(
                "matmul peak: "
                + ", ".join(f"{'fp32' if k == 'none' else k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
            )
    for q in rat:
        v = q.get("speedup")
        ratio = q.get("afa_over_none", q.get("over_equal"))
        lines.append(f"  {q['what']}: " + (f"{v:.2f}x faster" if v is not None else f"{ratio:.3f}"))
    for p in pipeline:
        lines.append(
            f"pipeline {p['kind']}: {p['samples_per_s']:.1f} samples/s ({p['workers']} workers, batch "
            f"{p['batch']}) from {p['source']}"
        )
        if "headroom" in p:
            lines.append(
                f"  = {p['headroom']:.1f}x what the fastest timed {p['kind']} step consumes "
                f"({p['consumed_per_s']:.2f} samples/s)"
            )
    if any(r.best_step_cpu_share is not None and r.best_step_cpu_share < 0.8 for r in results):
        lines.append(
            "note: cpu = CPU share of the fastest step (1 = all threads busy); below 0.8 other processes "
            "were using the cores: rerun with more --rounds on a quieter machine"
        )
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    results, peaks, rat, notes = ([], {}, [], []) if args.no_steps else run_steps(args, device)
    pipeline = run_pipeline(args, device) if args.pipeline else []
    for p in pipeline:  # does the loader keep up with the fastest timed step of its kind?
        fastest = [r for r in results if r.config["kind"] == p["kind"] and r.config["impl"] == "ours" and r.times_s]
        if fastest:
            best = min(fastest, key=lambda r: r.min_s)
            p["consumed_per_s"] = best.config["batch"] / best.min_s
            p["headroom"] = p["samples_per_s"] / p["consumed_per_s"]
    report = {
        "machine": machine_info(device),
        "args": vars(args),
        "matmul_peak_flops_per_s": peaks,
        "steps": [asdict(r) for r in results],
        "ratios": rat,
        "pipeline": pipeline,
        "notes": notes,
    }
    print(table(results, peaks, rat, pipeline, notes))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
