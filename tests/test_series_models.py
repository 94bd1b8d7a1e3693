"""Series networks: shapes and gradients, the PAU unit by hand, options, parameter groups, ImageNet
loading, key conversion, and parity with the original code through a golden file
(tests/golden/series_parity.json, written by tools/series_golden.py from the original)."""

import json
import math

import pytest
import tiny_trunk
import torch
from torchvision.models import resnet50

from models import build_model, convert_reference_state_dict, model_from_config, to_reference_state_dict
from models.series import PAUnit, SeriesConfig
from tools.series_golden import GOLDEN, named_values, ours, pair_input, run_pair, summarise

TINY = {"depths": [1, 1, 1, 1], "width": tiny_trunk.WIDTH}  # the structure, cheaply (golden files: ResNet-50)


def pair(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g)


@pytest.mark.parametrize("fusion", ["pau", "siamese"])
def test_shapes_and_every_parameter_gets_a_gradient(fusion):
    torch.manual_seed(0)
    model = build_model("series", fusion, **TINY)
    a, b = pair()
    out = model(a, b)
    assert list(out) == ["pair"] and out["pair"].shape == (2, 2)
    out["pair"].logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # 2 x (layer2 + layer3 + layer4) channels or layer4's: 2 x (8 + 16 + 32) x width or 32 x width
    # (ResNet-50: 7168 or 2048)
    assert model.fc.in_features == (112 if fusion == "pau" else 32) * tiny_trunk.WIDTH
    rebuilt = model_from_config(model.config.to_dict())
    assert rebuilt.config == model.config and set(rebuilt.state_dict()) == set(model.state_dict())


def test_pau_unit_against_hand_computed_values():
    unit = PAUnit(16)  # hidden width round(16 / 16) = 1
    eye = torch.eye(16)[..., None, None]
    with torch.no_grad():
        unit.gate[0].weight.copy_(eye)
        unit.gate[0].bias.zero_()
        unit.gate[2].weight.copy_(eye)
        unit.gate[2].bias.fill_(1.0)  # k = x + 1 for x >= 0
        unit.channel.fc1.weight.fill_(1.0)
        unit.channel.fc2.weight.fill_(0.5)
    x = torch.zeros(1, 16, 1, 2)
    x[0, 0, 0] = torch.tensor([1.0, 2.0])
    x[0, 1, 0] = torch.tensor([3.0, 0.0])
    # v = (x + 1) x: channel 0 [2, 6], channel 1 [12, 0]
    # channel cell: mean + max = 4 + 6 = 10 and 6 + 12 = 18; FC1 sums: 28; FC2: c = 14 everywhere
    # spatial cell: position 0: 14 / 16 + 12 = 12.875; position 1: 6 / 16 + 6 = 6.375
    # GAP(c x) = 14 * mean(x): 21, 21; GAP(s x): (12.875 + 6.375 * 2) / 2 = 12.8125, 12.875 * 3 / 2 = 19.3125
    expected = torch.zeros(32)
    expected[[0, 1, 16, 17]] = torch.tensor([21.0, 21.0, 12.8125, 19.3125])
    assert torch.allclose(unit(x)[0], expected)


def test_symmetrisation_and_shared_units():
    torch.manual_seed(0)
    a, b = pair()
    plain = build_model("series", "pau", **TINY).eval()
    with torch.no_grad():
        ab, ba = plain(a, b)["pair"], plain(b, a)["pair"]
    assert not torch.allclose(ab, ba.flip(1), atol=1e-4)  # separate units: swapping is not symmetric
    sym = build_model("series", "pau", symmetric=True, **TINY)
    sym.load_state_dict(plain.state_dict())
    sym.eval()
    with torch.no_grad():
        s_ab, s_ba = sym(a, b)["pair"], sym(b, a)["pair"]
    assert torch.allclose(s_ab, s_ba.flip(1), atol=1e-5)
    assert torch.allclose(s_ab, (ab + ba.flip(1)) / 2, atol=1e-5)
    shared = build_model("series", "pau", shared_units=True, **TINY)
    keys = set(shared.state_dict())
    assert any(k.startswith("units.shared.") for k in keys) and not any(k.startswith("units.a.") for k in keys)
    with pytest.raises(ValueError, match="fusion"):
        build_model("series", "afa")
    with pytest.raises(ValueError, match="PAU network only"):
        SeriesConfig(fusion="siamese", shared_units=True)
    with pytest.raises(TypeError, match="unknown options"):
        build_model("series", "pau", tasks={"x": 2})


def test_param_groups_follow_the_original_10x_rule():
    model = build_model("series", "pau", **TINY)
    groups = {g["name"]: g for g in model.param_groups(1e-5, weight_decay=5e-4)}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx({"backbone": 1e-5, "units": 1e-5, "head": 1e-4})
    names = {id(p): n for n, p in model.named_parameters()}
    head = sorted(names[id(p)] for p in groups["head"]["params"])
    # the original's "fc" in the module name: the final linear and the channel cells' FC1 / FC2
    assert head == sorted(n for n in names.values() if n.startswith("fc.") or ".channel.fc" in n)
    counted = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(counted) == sorted(names) and len(set(counted)) == len(counted)


def test_imagenet_weights_load_into_the_trunk_strictly():
    sd = resnet50(weights=None).state_dict()
    model = build_model("series", "siamese", backbone_weights=sd)
    assert torch.equal(model.trunk.layer3[2].conv2.weight, sd["layer3.2.conv2.weight"])
    assert model.load_backbone_weights(sd) == ["fc.bias", "fc.weight"]
    with pytest.raises(ValueError, match="missing keys"):
        build_model("series", "pau", backbone_weights={k: v for k, v in sd.items() if not k.startswith("layer4")})


def test_key_conversion_is_strict_and_covers_the_original_names():
    golden = json.loads(GOLDEN.read_text())
    for fusion in ("pau", "siamese"):
        model = build_model("series", fusion)
        sd = model.state_dict()
        ref = to_reference_state_dict(sd, "series", fusion)
        params = {n for n, _ in model.named_parameters()}
        assert {k for k in ref if convert_reference_state_dict({k: ref[k]}, "series", fusion).keys() <= params} == set(
            golden["nets"][fusion]["grads"]
        )  # exactly the original's parameter names
        assert convert_reference_state_dict(ref, "series", fusion).keys() == sd.keys()
        with pytest.raises(ValueError, match="1 keys are not"):
            convert_reference_state_dict({**ref, "pau31.conv1.weight": torch.zeros(1)}, "series", fusion)
    with pytest.raises(ValueError, match="are not siamese"):
        convert_reference_state_dict({"pau11.conv1.weight": torch.zeros(1)}, "series", "siamese")


@pytest.mark.parametrize("fusion", ["pau", "siamese"])
def test_outputs_and_gradients_match_the_original_golden_file(fusion):
    golden = json.loads(GOLDEN.read_text())["nets"][fusion]
    shapes = {
        k: v.shape
        for k, v in to_reference_state_dict(build_model("series", fusion).state_dict(), "series", fusion).items()
    }
    model = ours(fusion, named_values(shapes))
    logits, grads = run_pair(model, *pair_input(), key="pair")
    assert torch.allclose(logits, torch.tensor(golden["logits"], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    got = summarise(to_reference_state_dict(grads, "series", fusion))
    assert got.keys() == golden["grads"].keys()
    for name, (s, norm, dot) in golden["grads"].items():
        gs, gnorm, gdot = got[name]
        assert math.isclose(gnorm, norm, rel_tol=1e-8), name
        assert abs(gs - s) <= 1e-8 * norm * 10 + 1e-300 and abs(gdot - dot) <= 1e-8 * norm * 10 + 1e-300, name
