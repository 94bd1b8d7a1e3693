"""The baselines' fusion units, fusion points, the 'self' start and the fusion records."""

import math

import pytest
import tiny_trunk
import torch
import torch.nn.functional as F

from models import AFALayer, build_model
from models.fusion import NDDR, CrossStitch, resolve_points

TINY = tiny_trunk.MODEL


def _pair(c=6, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, c, s, s, generator=g).requires_grad_() for _ in range(2))


def test_cross_stitch_starts_at_point9_self_point1_other():
    x1, x2 = _pair()
    out = CrossStitch(("a", "b"), 6)({"a": x1, "b": x2})
    torch.testing.assert_close(out["a"], 0.9 * x1 + 0.1 * x2)
    torch.testing.assert_close(out["b"], 0.9 * x2 + 0.1 * x1)


def test_cross_stitch_weights_are_per_channel_and_learned():
    unit = CrossStitch(("a", "b"), 6)
    with torch.no_grad():
        unit.same["a"][2] = 0.5
        unit.other["b"][0] = -1.0  # target b, source a (two tasks: the key is the target)
    x1, x2 = _pair()
    out = unit({"a": x1, "b": x2})
    torch.testing.assert_close(out["a"][:, 2], 0.5 * x1[:, 2] + 0.1 * x2[:, 2])
    torch.testing.assert_close(out["b"][:, 0], 0.9 * x2[:, 0] - 1.0 * x1[:, 0])
    out["a"].sum().backward()
    assert unit.same["a"].grad is not None and unit.other["a"].grad is not None
    assert unit.same["b"].grad is None  # task b's weights only act on task b's output


def test_nddr_starts_at_point9_self_point1_other_before_bn_and_relu():
    unit = NDDR(("a", "b"), 6).eval()  # fresh BN: mean 0, var 1
    x1, x2 = _pair()
    x = torch.cat((x1, x2), dim=1)
    torch.testing.assert_close(unit.conv["a"](x), 0.9 * x1 + 0.1 * x2)
    torch.testing.assert_close(unit.conv["b"](x), 0.1 * x1 + 0.9 * x2)
    out = unit({"a": x1, "b": x2})
    bn = 1 / math.sqrt(1 + unit.bn["a"].eps)
    torch.testing.assert_close(out["a"], F.relu(bn * (0.9 * x1 + 0.1 * x2)))
    torch.testing.assert_close(out["b"], F.relu(bn * (0.9 * x2 + 0.1 * x1)))


def test_fusion_points_by_stage_and_block_and_sam_size_per_point():
    model = build_model("image", "afa", input_size=64, **TINY, fusion_at=["layer3", "layer4.1"])
    assert list(model.fusions) == ["layer3", "layer4_1"]
    assert model.fusions["layer3"].sam.size == (4, 4)  # 64 px at stride 16
    assert model.fusions["layer4_1"].sam.size == (2, 2)  # at stride 32
    assert model.fusions["layer3"].cam.self_fc.out_features == 16 * tiny_trunk.WIDTH  # layer3 (ResNet-50: 1024)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out["age"].shape == (1, 8)
    pixel = build_model("pixel", "cross_stitch", input_size=64, **TINY, fusion_at=["layer2", "layer4.0"])
    assert (
        list(pixel.fusions) == ["layer2", "layer4_0"]
        and pixel.fusions["layer4_0"].same["seg"].shape[0] == 32 * tiny_trunk.WIDTH
    )


def test_fusion_point_errors():
    with pytest.raises(ValueError, match="name the same place"):
        resolve_points("afa", ["layer4", "layer4.2"], [3, 4, 6, 3])
    with pytest.raises(ValueError, match="has 3 blocks"):
        resolve_points("afa", ["layer4.3"], [3, 4, 6, 3])
    with pytest.raises(ValueError, match="expected layer1..layer4"):
        resolve_points("nddr", ["stage4"], [3, 4, 6, 3])
    with pytest.raises(ValueError, match="has no fusion points"):
        build_model("image", "none", fusion_at=["layer3"], **TINY)
    assert [p for _, _, p in resolve_points("afa", None, [3, 4, 6, 3])] == ["layer4.0", "layer4.1", "layer4.2"]


def test_pixel_low_level_features_are_taken_before_a_layer1_fusion():
    torch.manual_seed(0)
    model = build_model("pixel", "cross_stitch", input_size=33, **TINY).eval()
    seen = {}
    for t, head in model.heads.items():
        head.decoder.reduce.register_forward_hook(lambda m, i, o, t=t: seen.__setitem__(t, i[0]))
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        model(x)
        for t, trunk in model.trunks.items():
            torch.testing.assert_close(seen[t], trunk.layer1(trunk.stem(x)))


def test_fusion_init_self_leans_afa_towards_the_own_branch():
    layer = AFALayer(6, (3, 3), grad_mode="joint", self_prior=True)
    assert [n for n, _ in layer.named_parameters() if "self_prior" in n] == ["cam.self_prior", "sam.self_prior"]
    assert float(layer.cam.self_prior.detach()) == pytest.approx(math.log(9))
    with torch.no_grad():  # equal learned logits: the prior alone sets the weights to 0.9 / 0.1
        for m in (layer.cam, layer.sam):
            m.self_fc.weight.zero_()
            m.other_fc.weight.zero_()
    x1, x2 = _pair()
    w = layer.cam.weights(x1, x2)  # w[target][source]
    torch.testing.assert_close(w[0][0], torch.full_like(w[0][0], 0.9))
    torch.testing.assert_close(w[1][0], torch.full_like(w[1][0], 0.1))
    default = build_model("image", "afa", **TINY, input_size=64)
    assert not any("self_prior" in k for k in default.state_dict())  # the reference's keys by default


def test_records_mixing_weights_and_gradient_norms():
    torch.manual_seed(0)
    layer = AFALayer(6, (3, 3), grad_mode="protect", tasks=("a", "b")).train()
    layer.monitor = True
    x1, x2 = _pair()
    g1, g2 = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    out = layer({"a": x1, "b": x2})
    ((out["a"] * g1).sum() + (out["b"] * g2).sum()).backward()
    with torch.no_grad():
        w_cam = layer.cam.weights(x1, x2)
    stats = layer.read_stats()
    mixing = {f"{m}/w/{t}/{u}" for m in ("cam", "sam") for t in "ab" for u in "ab"}  # target t, source u
    assert set(stats) == mixing | {"grad_out/a", "grad_out/b", "grad_in/a", "grad_in/b"}
    assert stats["cam/w/a/a"] == pytest.approx(float(w_cam[0][0].mean()), rel=1e-6)
    assert stats["cam/w/a/b"] == pytest.approx(float(w_cam[0][1].mean()), rel=1e-6)
    assert stats["cam/w/a/a"] + stats["cam/w/a/b"] == pytest.approx(1.0)
    assert stats["grad_out/a"] == pytest.approx(float(g1.norm()), rel=1e-6)
    assert stats["grad_in/a"] == pytest.approx(float(x1.grad.norm()), rel=1e-6)
    assert stats["grad_in/b"] == pytest.approx(float(x2.grad.norm()), rel=1e-6)
    assert layer.read_stats() == {}  # read once: reset
    layer.eval()
    layer({"a": x1, "b": x2})
    assert layer.read_stats() == {}  # nothing recorded outside training


def test_records_adaptive_fallbacks():
    layer = AFALayer(6, (3, 3), grad_mode="adaptive", tau=1.0001, tasks=("a", "b")).train()
    layer.monitor = True
    x1, x2 = _pair()
    out = layer({"a": x1, "b": x2})
    ((out["a"]).sum() + 1e3 * (out["b"] * torch.randn(2, 6, 3, 3)).sum()).backward()
    stats = layer.read_stats()
    assert stats["fallback/a"] == 1.0  # both modules fell back for the dominated branch


def test_network_fusion_stats_and_shared_parameters():
    torch.manual_seed(0)
    model = build_model("image", "cross_stitch", input_size=64, **TINY).train()
    model.monitor_fusions()
    sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64)).values()).backward()
    stats = model.fusion_stats()
    assert stats["layer1/same/gender"] == pytest.approx(0.9) and stats["layer4/other/age/gender"] == pytest.approx(0.1)
    assert stats["layer2/grad_in/age"] > 0 and stats["layer4/grad_out/gender"] > 0
    assert [id(p) for p in model.shared_parameters()] == [id(p) for p in model.fusions["layer4"].parameters()]
    shared = build_model("image", "shared", **TINY)
    assert len(shared.shared_parameters()) == len(list(shared.trunks["shared"].layer4[-1].parameters()))
    assert build_model("image", "none", **TINY).shared_parameters() == []
