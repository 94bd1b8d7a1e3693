"""Parity of the series networks with the original code (zhenshen-mla/Series-Photo-Selection).

    SERIES_REFERENCE=/path/to/checkout python tools/series_golden.py [--out tests/golden/series_parity.json]

Builds the original ``models/PAU_resnet50.py`` and ``models/ResNet50.py`` networks (their classes
directly: ``make_network`` would download ImageNet weights), fills every parameter and BN buffer
with values that depend only on the tensor's original name and shape, runs them in eval mode
and float64 on a seeded pair of 64 x 64 batches, back-propagates ``sum(logits * r)`` for a
seeded r, and writes the logits in full plus, per parameter gradient, its sum, L2 norm and dot
product with a seeded random vector. tests/test_series_models.py checks our networks, loaded
with the same values through ``to_reference_state_dict``, against that file (no checkout
needed); tests/test_series_reference.py compares against the checkout itself when
SERIES_REFERENCE is set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "series_parity.json"
ORIGINAL_FILES = {"pau": "PAU_resnet50.py", "siamese": "ResNet50.py"}
BATCH, SIZE, SEED = 2, 64, 0


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) * 7)


def named_values(shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Float64 values for every tensor of a state dict named in the original layout, from its
    name and shape alone: convs and linears normal(0, sqrt(2 / fan_in)) (PAU gates sqrt(1 / fan_in)), BN
    scales U(0.4, 0.9) (activations stay moderate through 16 random bottlenecks), biases and running means
    N(0, 0.1), running variances U(0.5, 1.5)."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.int64)
            continue
        g = _generator(name)
        if name.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
        elif name.endswith("weight") and len(shape) == 1:  # BN scales: the residual stream stays small
            t = 0.4 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
        elif name.endswith(("bias", "running_mean")):
            t = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            fan_in = int(torch.Size(shape[1:]).numel())
            # the PAU gates multiply features by features: smaller weights keep the cubic terms moderate
            gain = 1.0 if name.startswith("pau") else 2.0
            t = torch.randn(shape, generator=g, dtype=torch.float64) * (gain / fan_in) ** 0.5
        out[name] = t
    return out


def pair_input(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, r): two (2, 3, 64, 64) photo batches and the (2, 2) loss weights."""
    g = torch.Generator().manual_seed(SEED)
    a = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    b = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    r = torch.randn(BATCH, 2, generator=g, dtype=torch.float64)
    return a.to(dtype), b.to(dtype), r.to(dtype)


def run_pair(model: nn.Module, a: Tensor, b: Tensor, r: Tensor, key: str | None = None) -> tuple[Tensor, dict]:
    """Eval-mode logits and {parameter name: gradient} of sum(logits * r)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    out = model(a, b)
    logits = out[key] if key else out
    (logits * r).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def summarise(grads: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """Per gradient: [sum, L2 norm, dot product with a N(0, 1) vector seeded by its name], the
    summaries of tools/parity.py's golden file."""
    from tools.parity import summary

    return {name: summary(name, g) for name, g in sorted(grads.items())}


def load_original(checkout: str | os.PathLike, fusion: str) -> nn.Module:
    """The original network class of ``fusion`` built from a checkout (no weight download)."""
    root = Path(checkout) / "models"
    added = []
    try:
        # PAU_resnet50.py imports ``models.PAUnit``; our own package is also called ``models``,
        # so the original unit module is registered under that name for the import only.
        spec = importlib.util.spec_from_file_location("_original_PAUnit", root / "PAUnit.py")
        paunit = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(paunit)  # type: ignore[union-attr]
        import models  # noqa: F401  (the parent package must exist for the alias below)

        sys.modules["models.PAUnit"] = paunit
        added.append("models.PAUnit")
        spec = importlib.util.spec_from_file_location(f"_original_{fusion}", root / ORIGINAL_FILES[fusion])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return module.ResNet(module.Bottleneck, [3, 4, 6, 3])


def ours(fusion: str, reference_values: Mapping[str, Tensor]) -> nn.Module:
    """Our network with the values given in the original layout, converted and loaded strictly."""
    from models import build_model, convert_reference_state_dict

    model = build_model("series", fusion).double()
    model.load_state_dict(convert_reference_state_dict(reference_values, "series", fusion), strict=True)
    return model


def generate(checkout: str | os.PathLike, commit: str | None = None) -> dict:
    if commit is None:
        found = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = found.stdout.strip() if found.returncode == 0 else "unknown (not a git checkout; pass --commit)"
    result: dict = {
        "source": "zhenshen-mla/Series-Photo-Selection",
        "commit": commit,
        "input": {"batch": BATCH, "size": SIZE, "seed": SEED, "dtype": "float64"},
        "nets": {},
    }
    a, b, r = pair_input()
    for fusion in ORIGINAL_FILES:
        net = load_original(checkout, fusion).double()  # before loading: the values stay float64
        values = named_values({k: v.shape for k, v in net.state_dict().items()})
        net.load_state_dict(values, strict=True)
        logits, grads = run_pair(net, a, b, r)
        result["nets"][fusion] = {"logits": logits.tolist(), "grads": summarise(grads)}
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--reference",
        default=os.environ.get("SERIES_REFERENCE"),
        help="checkout of the original repository (default: $SERIES_REFERENCE)",
    )
    p.add_argument("--out", default=str(GOLDEN))
    p.add_argument("--commit", default=None, help="the checkout's commit, for an exported tree (git archive)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.reference or not (Path(args.reference) / "models" / "PAU_resnet50.py").is_file():
        print(
            "error: set SERIES_REFERENCE (or --reference) to a checkout of zhenshen-mla/Series-Photo-Selection",
            file=sys.stderr,
        )
        return 2
    result = generate(args.reference, args.commit)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} (commit {result['commit']})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
