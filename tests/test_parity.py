"""Parity with the original AFANet code (tools/parity.py), on every run and without its files.

tests/golden/afanet_parity.json holds the original networks' outputs and gradient summaries for
seeded tiny networks (written by ``python -m tools.parity --reference CLONE --write ...`` from the
commits named in it); ours must reproduce them. With AFANET_REFERENCE set to a clone of the
original repository the comparison is also made directly, tensor by tensor.
"""

import json
import os

import pytest

from tools import parity

GOLDEN = json.loads(parity.GOLDEN.read_text())
CASES = [pytest.param(c, id=parity.case_name(*c)) for c in parity.CASES]


def test_golden_file_covers_every_case_at_the_committed_settings():
    assert sorted(GOLDEN["cases"]) == sorted(parity.case_name(*c) for c in parity.CASES)
    assert GOLDEN["seed"] == parity.SEED and GOLDEN["depths"] == parity.DEPTHS and GOLDEN["sizes"] == parity.SIZES


@pytest.mark.parametrize("case", CASES)
def test_matches_the_original_networks(case):
    _, mine = parity.ours(*case)
    golden = GOLDEN["cases"][parity.case_name(*case)]
    assert parity.compare_golden(parity.summarise(mine, full_outputs=case[0] == "image"), golden) == []


def test_golden_comparison_notices_another_gradient_path():
    # Both branches shielded (the original's older protect mode) must not pass for the latest one.
    model = parity.build_model(
        "image",
        "afa",
        "protect",
        input_size=parity.SIZES["image"],
        depths=parity.DEPTHS["image"],
        protect_tasks=["gender", "age"],
    ).to(parity.DTYPE)
    parity.randomise_(model)
    model.eval()
    out = model(parity.inputs("image"))
    parity._loss(out).backward()
    res = parity.Result({t: y.detach() for t, y in out.items()}, {n: p.grad for n, p in model.named_parameters()})
    bad = parity.compare_golden(parity.summarise(res, full_outputs=True), GOLDEN["cases"]["image/afa/protect"])
    # the same outputs (forward values agree in every mode), other gradients in task 2's branch
    assert any(b.startswith("grads trunks.age.") for b in bad) and not any(b.startswith("outputs") for b in bad)
    assert not any(b.startswith("grads trunks.gender.") for b in bad)


@pytest.mark.skipif(not os.environ.get("AFANET_REFERENCE"), reason="set AFANET_REFERENCE to a clone of the original")
@pytest.mark.parametrize("case", CASES)
def test_direct_comparison_with_the_original_code(case):
    model, mine = parity.ours(*case)
    ref = parity.original(os.environ["AFANET_REFERENCE"], *case, model)
    assert parity.compare_tensors(mine.outputs, ref.outputs) < parity.RTOL
    assert parity.compare_tensors(mine.grads, ref.grads) < parity.RTOL
