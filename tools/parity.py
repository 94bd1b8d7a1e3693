"""Parity with the original AFANet code: outputs and every parameter gradient, number by number.

Each case builds our network (``build_model``) at a tiny size with seeded random weights (numpy's
generator, so the numbers do not depend on torch's random streams), converts the weights to the
original's layout (``to_reference_state_dict``) and loads them strictly into the original network
(``tools/original.py``). Both run in eval mode on the same seeded input; the loss is a fixed random
projection of the outputs, so every output element and parameter gets a gradient.

    python -m tools.parity --reference PATH/TO/AFANet            # compare directly, print errors
    python -m tools.parity --reference PATH --write tests/golden/afanet_parity.json

The golden file holds the ORIGINAL's numbers (outputs in full for image nets; for every other
tensor its sum, L2 norm and dot product with a seeded random vector), so ``tests/test_parity.py``
checks the parity claim on every CI run without the original code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models import build_model, convert_reference_state_dict, to_reference_state_dict

SEED = 20201019  # CIKM 2020
BATCH = 2
# Tiny networks, real structure: one bottleneck per stage (several in stage 4, where AFA sits;
# the original pixel nets' multi-grid stage 4 always has 3), small inputs with > 1x1 stage-4 maps.
SIZES = {"image": 64, "pixel": 33}
DEPTHS = {"image": [1, 1, 1, 2], "pixel": [1, 1, 1, 3]}
FULL_OUTPUTS = ("image",)  # kinds whose outputs are small enough to store whole in the golden file
CASES = [
    (kind, fusion, mode)
    for kind in ("image", "pixel")
    for fusion, mode in (
        ("none", "protect"),
        ("afa", "protect"),
        ("afa", "joint"),
        ("shared", "protect"),
        ("cross_stitch", "protect"),
        ("nddr", "protect"),
    )
]
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "afanet_parity.json"
# In float64: float32 rounding differs between kernels and thread counts, and with random weights a
# value within rounding of 0 occasionally flips a ReLU, which changes whole gradients.
DTYPE = torch.float64
RTOL = 1e-8


@dataclass
class Result:
    outputs: dict[str, Tensor]  # task -> output
    grads: dict[str, Tensor]  # our parameter name -> gradient


def case_name(kind: str, fusion: str, mode: str) -> str:
    return f"{kind}/{fusion}" + (f"/{mode}" if fusion == "afa" else "")


def _rng(*keys: str) -> np.random.Generator:
    return np.random.default_rng([SEED, *(zlib.crc32(k.encode()) for k in keys)])


def randomise_(model: nn.Module) -> None:
    """Seeded random values for every parameter and buffer, keyed by name (order-independent, and
    independent of torch's random state): convs and linears He-normal, BN weight 1 + 0.1 N, biases
    and running means 0.1 N, running variances U(0.5, 1.5), cross-stitch and NDDR weights their
    constant initial value + 0.05 N."""
    bn_like = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            module, _, leaf = name.rpartition(".")
            g = _rng("init", name)
            if leaf == "running_var":
                v = g.uniform(0.5, 1.5, t.shape)
            elif leaf in ("running_mean", "bias") or (module in bn_like and leaf != "weight"):
                v = 0.1 * g.standard_normal(t.shape)
            elif module in bn_like:
                v = 1 + 0.1 * g.standard_normal(t.shape)
            elif name.startswith("fusions.") and not any(m in name for m in (".cam.", ".sam.")):
                # cross-stitch vectors and NDDR convs: near their (constant) 0.9 / 0.1 initialisation
                v = t.detach().double().numpy() + 0.05 * g.standard_normal(t.shape)
            else:  # convs and linears, AFA's included
                v = g.standard_normal(t.shape) * np.sqrt(2.0 / (t.numel() // t.shape[0]))
            t.copy_(torch.from_numpy(np.asarray(v, dtype=np.float64)).to(t.dtype))


def inputs(kind: str) -> Tensor:
    """The seeded input batch."""
    size = SIZES[kind]
    x = torch.from_numpy(_rng("input", kind).standard_normal((BATCH, 3, size, size))).to(DTYPE)
    return x


def _loss(outputs: Mapping[str, Tensor]) -> Tensor:
    total = 0
    for t, y in outputs.items():
        r = torch.from_numpy(_rng("target", t).standard_normal(tuple(y.shape))).to(y.dtype)
        total = total + (y * r).sum()
    return total


def ours(kind: str, fusion: str, mode: str) -> tuple[nn.Module, Result]:
    model = build_model(kind, fusion, mode, input_size=SIZES[kind], depths=DEPTHS[kind]).to(DTYPE)
    randomise_(model)
    model.eval()
    x = inputs(kind)
    out = model(x)
    _loss(out).backward()
    return model, Result(
        {t: y.detach() for t, y in out.items()}, {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    )


def original(root: str | Path, kind: str, fusion: str, mode: str, model: nn.Module) -> Result:
    """The original network with ``model``'s weights, run on the same input and loss."""
    from tools.original import build_original

    net = build_original(root, kind, fusion, SIZES[kind], DEPTHS[kind], mode).to(DTYPE)
    net.load_state_dict(to_reference_state_dict(model.state_dict(), kind, fusion), strict=True)
    net.eval()
    x = inputs(kind)
    y1, y2 = net(x)
    out = dict(zip(model.tasks, (y1, y2)))
    _loss(out).backward()
    grads = convert_reference_state_dict(
        {n: p.grad for n, p in net.named_parameters() if p.grad is not None}, kind, fusion
    )
    return Result({t: y.detach() for t, y in out.items()}, {n: g.detach() for n, g in grads.items()})


def summary(name: str, t: Tensor) -> list[float]:
    """[sum, L2 norm, dot with a seeded N(0, 1) vector] in float64."""
    v = t.detach().double().flatten()
    proj = torch.from_numpy(_rng("proj", name).standard_normal(v.numel()))
    return [float(v.sum()), float(v.norm()), float(v @ proj)]


def summarise(res: Result, full_outputs: bool) -> dict:
    return {
        "outputs": {
            t: (y.double().tolist() if full_outputs else summary(f"out/{t}", y)) for t, y in res.outputs.items()
        },
        "grads": {n: summary(n, g) for n, g in sorted(res.grads.items())},
    }


def compare_tensors(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Worst relative error (max |a - b| / max |b|) over matching names; missing names raise."""
    if set(a) != set(b):
        raise AssertionError(
            f"names differ: only ours {sorted(set(a) - set(b))[:5]}, only original {sorted(set(b) - set(a))[:5]}"
        )
    worst = 0.0
    for k in a:
        scale = float(b[k].abs().max()) or 1.0
        worst = max(worst, float((a[k].double() - b[k].double()).abs().max()) / scale)
    return worst


def compare_golden(ours_summary: dict, golden: dict) -> list[str]:
    """Mismatches of our summaries against the golden ones (empty when they agree)."""
    bad = []
    for part in ("outputs", "grads"):
        mine, ref = ours_summary[part], golden[part]
        if set(mine) != set(ref):
            return [
                f"{part}: names differ (only ours {sorted(set(mine) - set(ref))[:3]}, "
                f"only golden {sorted(set(ref) - set(mine))[:3]})"
            ]
        for name, want in ref.items():
            got = np.asarray(mine[name], dtype=np.float64)
            want = np.asarray(want, dtype=np.float64)
            # sums and projections may cancel to ~0: measure their error against the tensor's norm
            scale = want[1] if want.shape == (3,) else np.abs(want).max()
            if not np.all(np.abs(got - want) <= RTOL * (np.abs(want) + scale) + 1e-12):
                bad.append(f"{part} {name}: {got.tolist()[:3]} vs {want.tolist()[:3]}")
    return bad


def original_commit(root: str | Path) -> str:
    res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="a clone of zhenshen-mla/AFANet (latest commit checked out)")
    p.add_argument("--write", default=None, metavar="JSON", help="write the original's numbers as the golden file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    golden: dict = {
        "original_commit": original_commit(args.reference),
        "baseline_commit": "4fabc70",
        "seed": SEED,
        "sizes": SIZES,
        "depths": DEPTHS,
        "cases": {},
    }
    failed = False
    for kind, fusion, mode in CASES:
        name = case_name(kind, fusion, mode)
        model, mine = ours(kind, fusion, mode)
        ref = original(args.reference, kind, fusion, mode, model)
        e_out, e_grad = compare_tensors(mine.outputs, ref.outputs), compare_tensors(mine.grads, ref.grads)
        ok = e_out < RTOL and e_grad < RTOL
        failed |= not ok
        print(
            f"{name:<24} outputs {e_out:.2e}  gradients {e_grad:.2e} ({len(ref.grads)} tensors)  "
            f"{'PASS' if ok else 'FAIL'}",
            flush=True,
        )
        golden["cases"][name] = summarise(ref, full_outputs=kind in FULL_OUTPUTS)
    if args.write and not failed:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")
        print(f"wrote {args.write}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
