"""Equivalence with the original code itself: runs only when SERIES_REFERENCE points to a checkout of
zhenshen-mla/Series-Photo-Selection (a folder with models/PAU_resnet50.py, models/PAUnit.py,
models/ResNet50.py); tests/test_series_models.py checks the same through the golden file otherwise.

    SERIES_REFERENCE=path/to/Series-Photo-Selection python -m pytest -q tests/test_series_reference.py -s

The original networks are built from their classes (``make_network`` would download ImageNet
weights), every parameter and BN buffer is randomised, the weights go through
``to_reference_state_dict`` into the original (loaded strictly), and both run in eval mode on
the same seeded pair in float32: outputs and every parameter gradient must agree to rel. err. 1e-5.
"""

import os
from pathlib import Path

import pytest
import torch

from models import build_model, to_reference_state_dict
from tools.series_golden import load_original, run_pair

REFERENCE = os.environ.get("SERIES_REFERENCE")
pytestmark = pytest.mark.skipif(
    not REFERENCE or not (Path(REFERENCE) / "models" / "PAU_resnet50.py").is_file(),
    reason="set SERIES_REFERENCE to a checkout of zhenshen-mla/Series-Photo-Selection",
)


def randomise_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and BN buffer drawn at random (scaled so that activations stay moderate)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (name.endswith("weight") and t.ndim == 1):
                t.copy_(0.4 + 0.5 * torch.rand(t.shape, generator=g))
            elif name.endswith(("bias", "running_mean")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                gain = 1.0 if ".gate." in name else 2.0
                t.copy_(torch.randn(t.shape, generator=g) * (gain / t[0].numel()) ** 0.5)


@pytest.mark.parametrize("fusion", ["pau", "siamese"])
def test_outputs_and_every_gradient_equal_the_original(fusion):
    ours = build_model("series", fusion)
    randomise_(ours)
    original = load_original(REFERENCE, fusion)
    original.load_state_dict(to_reference_state_dict(ours.state_dict(), "series", fusion), strict=True)
    g = torch.Generator().manual_seed(1)
    a, b, r = (torch.randn(s, generator=g) for s in ((2, 3, 64, 64), (2, 3, 64, 64), (2, 2)))
    out_ref, grads_ref = run_pair(original, a, b, r)
    out, grads = run_pair(ours, a, b, r, key="pair")
    grads = to_reference_state_dict(grads, "series", fusion)
    assert grads.keys() == grads_ref.keys() == dict(original.named_parameters()).keys()
    out_err = ((out - out_ref).norm() / out_ref.norm()).item()
    errs = {k: ((grads[k] - grads_ref[k]).norm() / grads_ref[k].norm().clamp_min(1e-30)).item() for k in grads}
    worst = max(errs, key=errs.get)
    print(
        f"\n{fusion}: logits {out_ref.tolist()}; output rel. err {out_err:.2e}; "
        f"{len(errs)} parameter gradients, max rel. err {errs[worst]:.2e} ({worst})"
    )
    assert out_err < 1e-5 and errs[worst] < 1e-5
