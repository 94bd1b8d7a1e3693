"""Models: shapes, the AFA computation and its gradient modes, weights and conversions.

Small inputs and tiny trunks (tests/tiny_trunk.py: one bottleneck per stage, three in stage 4, width 16) keep this fast:
an image net built for 64 px has 2x2 stage-4 maps, a pixel net built for 64 px has 4x4 (output
stride 16). The real ResNet-50 is built where its layout matters (sizes, ImageNet weights).
"""

import pytest
import tiny_trunk
import torch
import torch.nn.functional as F
import torchvision

from models import (
    CAM,
    SAM,
    AFALayer,
    build_model,
    convert_reference_state_dict,
    init_from_stage1,
    to_reference_state_dict,
)
from models.fusion import FUSIONS

TINY = tiny_trunk.MODEL


def _rand_pair(c=8, s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(2, c, s, s, generator=g).requires_grad_()
    x2 = torch.randn(2, c, s, s, generator=g).requires_grad_()
    return x1, x2


# -- the modules compute what the paper says ------------------------------------------------


def test_cam_matches_formula():
    cam = CAM(channels=64)
    assert cam.reduce.out_features == max(2 * 64 // 16, 32) == 32
    x1, x2 = _rand_pair(c=64)
    s = torch.cat((x1.mean((2, 3)), x2.mean((2, 3))), 1)
    z = F.relu(s @ cam.reduce.weight.T)
    a, b = z @ cam.self_fc.weight.T, z @ cam.other_fc.weight.T
    w_self = (a.exp() / (a.exp() + b.exp()))[..., None, None]
    y1, y2 = cam(x1, x2)
    torch.testing.assert_close(y1, w_self * x1 + (1 - w_self) * x2)
    torch.testing.assert_close(y2, w_self * x2 + (1 - w_self) * x1)


def test_sam_matches_formula_and_weights_sum_to_one():
    sam = SAM((3, 3))
    x1, x2 = _rand_pair()
    m = torch.cat((x1.mean(1, keepdim=True), x2.mean(1, keepdim=True)), 1)
    g = F.relu(F.conv2d(m, sam.conv.weight, padding=3)).flatten(1)
    a, b = g @ sam.self_fc.weight.T, g @ sam.other_fc.weight.T
    w_self = torch.sigmoid(a - b).view(2, 1, 3, 3)
    y1, y2 = sam(x1, x2)
    torch.testing.assert_close(y1, w_self * x1 + (1 - w_self) * x2)
    torch.testing.assert_close(y1 + y2, x1 + x2)  # the pair of weights sums to one


def test_afa_layer_is_cam_relu_sam_relu():
    layer = AFALayer(8, (3, 3), grad_mode="joint")
    x1, x2 = _rand_pair()
    c1, c2 = layer.cam(x1, x2)
    expected = layer.sam(F.relu(c1), F.relu(c2))
    for y, e in zip(layer.fuse(x1, x2), expected):
        torch.testing.assert_close(y, F.relu(e))


# -- gradient modes ---------------------------------------------------------------------------


def _grads(layer, g1, g2, seed=0):
    layer.zero_grad()
    x1, x2 = _rand_pair(seed=seed)
    y1, y2 = layer.fuse(x1, x2)
    ((y1 * g1).sum() + (y2 * g2).sum()).backward()
    params = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return x1.grad, x2.grad, params, (x1, x2, y1, y2)


def _layers(**kw):
    torch.manual_seed(0)
    base = AFALayer(8, (3, 3), grad_mode="joint")
    out = {}
    for name, opts in kw.items():
        layer = AFALayer(8, (3, 3), **opts)
        layer.load_state_dict(base.state_dict())
        out[name] = layer
    return out


def test_forward_values_equal_in_all_modes():
    layers = _layers(joint={"grad_mode": "joint"}, protect={"grad_mode": "protect"}, adaptive={"grad_mode": "adaptive"})
    x1, x2 = _rand_pair()
    outs = [layer.fuse(x1, x2) for layer in layers.values()]
    for o in outs[1:]:
        torch.testing.assert_close(o[0], outs[0][0])
        torch.testing.assert_close(o[1], outs[0][1])


def test_protect_both_gives_each_branch_only_its_straight_through_gradient():
    layers = _layers(joint={"grad_mode": "joint"}, protect={"grad_mode": "protect", "protect_tasks": (0, 1)})
    g1, g2 = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    gx1, gx2, p_protect, (x1, x2, y1, y2) = _grads(layers["protect"], g1, g2)
    # dL/dx_t = dL/dy_t through the two ReLUs (after CAM and after SAM), nothing from the other task.
    with torch.no_grad():
        c1, c2 = (F.relu(c) for c in layers["protect"].cam(x1, x2))
    torch.testing.assert_close(gx1, g1 * (y1 > 0) * (c1 > 0))
    torch.testing.assert_close(gx2, g2 * (y2 > 0) * (c2 > 0))
    # The AFA parameters still learn from both outputs: SAM, the last module, gets exactly
    # the plain-autograd gradients; CAM gets a gradient from each task's loss alone.
    jx1, _, p_joint, _ = _grads(layers["joint"], g1, g2)
    assert not torch.allclose(jx1, gx1)
    for n in p_joint:
        if n.startswith("sam."):
            torch.testing.assert_close(p_protect[n], p_joint[n])
    zero = torch.zeros_like(g1)
    for only in ((g1, zero), (zero, g2)):
        _, _, p_one, _ = _grads(layers["protect"], *only)
        assert all(torch.count_nonzero(g) > 0 for n, g in p_one.items() if n.startswith("cam."))


def test_protect_default_shields_task_1_only_as_the_original_at_head():
    layers = _layers(p1={"grad_mode": "protect"})
    assert layers["p1"].protect_tasks == (0,)
    zero, g = torch.zeros(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    gx1, gx2, _, _ = _grads(layers["p1"], zero, g)  # loss on task 2 only
    assert torch.count_nonzero(gx1) == 0, "task 1 must get nothing from task 2's loss"
    assert torch.count_nonzero(gx2) > 0
    gx1, gx2, _, _ = _grads(layers["p1"], g, zero)  # loss on task 1 only
    assert torch.count_nonzero(gx2) > 0, "task 2's branch receives the fused gradient from task 1"


def test_adaptive_falls_back_above_threshold_only():
    layers = _layers(
        joint={"grad_mode": "joint"},
        protect={"grad_mode": "protect", "protect_tasks": (0, 1)},
        tight={"grad_mode": "adaptive", "tau": 1.0001},
        loose={"grad_mode": "adaptive", "tau": 1e6},
    )
    g1, g2 = torch.randn(2, 8, 3, 3), 1e3 * torch.randn(2, 8, 3, 3)  # task 2 dominates the fused gradient
    jx1, jx2, p_joint, _ = _grads(layers["joint"], g1, g2)
    px1, px2, _, _ = _grads(layers["protect"], g1, g2)
    tx1, _, p_tight, _ = _grads(layers["tight"], g1, g2)
    lx1, lx2, _, _ = _grads(layers["loose"], g1, g2)
    assert jx1.norm() > 10 * px1.norm()  # the case the mechanism exists for
    torch.testing.assert_close(tx1, px1)  # above the threshold: the pre-fusion gradient
    torch.testing.assert_close(lx1, jx1)  # below it: the fused one
    torch.testing.assert_close(lx2, jx2)
    for n in p_joint:  # SAM (the last module) learns from both outputs in every mode
        if n.startswith("sam."):
            torch.testing.assert_close(p_tight[n], p_joint[n])


def test_bad_layer_options_are_refused():
    with pytest.raises(ValueError, match="grad_mode"):
        AFALayer(8, (3, 3), grad_mode="detach")
    with pytest.raises(ValueError, match="tau"):
        AFALayer(8, (3, 3), grad_mode="adaptive", tau=0.5)


# -- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "pixel"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes_and_keys(kind, fusion):
    model = build_model(kind, fusion, input_size=64, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    shapes = {"image": {"gender": (2, 2), "age": (2, 8)}, "pixel": {"seg": (2, 40, 64, 64), "depth": (2, 1, 64, 64)}}
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes[kind]
    expected = {"afa": ["layer4_0", "layer4_1", "layer4_2"], "cross_stitch": ["layer1", "layer2", "layer3", "layer4"]}
    expected["nddr"] = expected["cross_stitch"]
    assert list(model.fusions) == expected.get(fusion, [])
    assert list(model.trunks) == (["shared"] if fusion == "shared" else list(out))


def test_default_sizes_give_the_papers_sam_sizes():
    assert build_model("image").fusions["layer4_0"].sam.size == (7, 7)
    pixel = build_model("pixel")
    assert pixel.fusions["layer4_0"].sam.size == (19, 19)
    trunk = pixel.trunks["seg"]
    assert [b.conv2.dilation for b in trunk.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert trunk.layer4[0].conv2.stride == (1, 1) and trunk.layer4[0].downsample[0].stride == (1, 1)


def test_options_set_tasks_and_sizes():
    model = build_model("image", tasks={"smile": 2, "pose": 5}, input_size=96, **TINY).eval()
    assert model.fusions["layer4_0"].sam.size == (3, 3)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert {k: v.shape[1] for k, v in out.items()} == {"smile": 2, "pose": 5}
    with pytest.raises(TypeError, match="unknown options"):
        build_model("image", crop=96)
    with pytest.raises(ValueError, match="kind"):
        build_model("video")


def test_sam_size_error_names_the_inputs_that_fit():
    model = build_model("image", "afa", input_size=64, **TINY).eval()
    with pytest.raises(ValueError, match=r"built for 2x2 .* got 3x3.* 33-64"):
        model(torch.randn(1, 3, 96, 96))


def _live_sam(model):
    """SAM's map g = ReLU(conv7x7(channel means)) sees non-negative, nearly uniform inputs, so with the
    reference's zero-mean init it is all zero (and SAM gets no gradient) whenever the kernel's sum is
    negative: about half of the layers at random. These tests check wiring: make every SAM live."""
    with torch.no_grad():
        for f in model.fusions.values():
            if isinstance(f, AFALayer):
                f.sam.conv.weight.abs_()


@pytest.mark.parametrize("kind", ["image", "pixel"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_parameter_gets_a_gradient(kind, fusion):
    torch.manual_seed(0)
    model = build_model(kind, fusion, "joint", input_size=64, **TINY).train()
    _live_sam(model)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert missing == []


def test_protect_mode_in_the_network_cuts_the_cross_task_path():
    torch.manual_seed(0)
    model = build_model("image", "afa", "protect", input_size=64, **TINY).eval()
    _live_sam(model)
    x = torch.randn(2, 3, 64, 64)
    model(x)["age"].sum().backward()
    gender_trunk = [p.grad for p in model.trunks["gender"].parameters()]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in gender_trunk)
    assert all(torch.count_nonzero(p.grad) > 0 for p in model.fusions.parameters())
    model.zero_grad()
    model(x)["gender"].sum().backward()  # task 2 is not shielded: gender's loss reaches the age trunk
    assert all(torch.count_nonzero(p.grad) > 0 for p in model.trunks["age"].layer4.parameters())


# -- weights ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_resnet(tmp_path_factory):
    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None).eval()
    for m in net.modules():  # non-trivial BN statistics so that a wrong load shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_weights_load_into_both_branches_and_match_its_features(torchvision_resnet, capsys):
    net, path = torchvision_resnet
    model = build_model("image", "none", backbone_weights=str(path), verbose=True, input_size=64).eval()
    assert "unused keys: fc.bias, fc.weight" in capsys.readouterr().out
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        for trunk in model.trunks.values():
            ours = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(trunk.stem(x)))))
            torch.testing.assert_close(ours, ref)


def test_backbone_weights_errors(tmp_path, torchvision_resnet):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("image", backbone_weights=str(tmp_path / "nope.pth"))
    sd = dict(torchvision_resnet[0].state_dict())
    del sd["layer3.0.conv1.weight"]
    with pytest.raises(ValueError, match="missing keys .*layer3.0.conv1.weight"):
        build_model("image", backbone_weights=sd)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        build_model("image", backbone_weights=str(bad))


@pytest.mark.parametrize("kind", ["image", "pixel"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_reference_layout_round_trips(kind, fusion):
    model = build_model(kind, fusion, input_size=64, **TINY)
    sd = model.state_dict()
    ref = to_reference_state_dict(sd, kind, fusion)
    prefixes = ("A_", "B_", "layer", "backbone.", "Cross_", "NDDR_", "conv1", "bn1")
    assert all(k.startswith(prefixes) for k in ref)
    back = convert_reference_state_dict(ref, kind, fusion)
    assert list(back) == list(sd)
    model.load_state_dict(back, strict=True)


def test_reference_names_map_to_ours():
    t = torch.zeros(1)
    image = convert_reference_state_dict(
        {
            "A_conv1.weight": t,
            "layer2.0.B_downsample.1.running_var": t,
            "layer4.1.afa_cam.cam.trans1.weight": t,
            "layer4.2.afa_sam.sam.trans2.weight": t,
            "layer4.0.afa_cam.cam.fc.weight": t,
            "B_fc.bias": t,
        },
        "image",
    )
    assert list(image) == [
        "trunks.gender.conv1.weight",
        "trunks.age.layer2.0.downsample.1.running_var",
        "fusions.layer4_1.cam.self_fc.weight",
        "fusions.layer4_2.sam.other_fc.weight",
        "fusions.layer4_0.cam.reduce.weight",
        "heads.age.fc.bias",
    ]
    pixel = convert_reference_state_dict(
        {
            "backbone.layer3.5.A_bn2.num_batches_tracked": t,
            "A_aspp.aspp3.atrous_conv.weight": t,
            "B_aspp.global_avg_pool.2.running_mean": t,
            "A_aspp.bn1.bias": t,
            "B_decoder.last_conv.4.weight": t,
            "A_decoder.my_classify.bias": t,
            "backbone.layer4.0.afa_sam.sam.conv.weight": t,
        },
        "pixel",
    )
    assert list(pixel) == [
        "trunks.seg.layer3.5.bn2.num_batches_tracked",
        "heads.seg.aspp.convs.2.0.weight",
        "heads.depth.aspp.convs.4.2.running_mean",
        "heads.seg.aspp.project.1.bias",
        "heads.depth.decoder.fuse.4.weight",
        "heads.seg.decoder.classifier.bias",
        "fusions.layer4_0.sam.conv.weight",
    ]
    cross = convert_reference_state_dict(
        {"Cross_2.B_weight_diff": t, "Cross_4.A_weight_same": t}, "image", "cross_stitch"
    )
    assert list(cross) == ["fusions.layer2.other.age", "fusions.layer4.same.gender"]
    nddr = convert_reference_state_dict(
        {"backbone.NDDR_3.nddr_2.weight": t, "backbone.NDDR_1.bn_1.running_var": t}, "pixel", "nddr"
    )
    assert list(nddr) == ["fusions.layer3.conv.depth.weight", "fusions.layer1.bn.seg.running_var"]
    hard = convert_reference_state_dict({"layer1.0.conv1.weight": t, "B_fc.weight": t}, "image", "shared")
    assert list(hard) == ["trunks.shared.layer1.0.conv1.weight", "heads.age.fc.weight"]
    with pytest.raises(ValueError, match="not keys of the original AFANet image 'afa' network: .*module.A_conv1"):
        convert_reference_state_dict({"module.A_conv1.weight": t}, "image")


def test_stage2_initialisation_takes_the_trunks_and_reports():
    torch.manual_seed(0)
    single = build_model("pixel", "none", input_size=64, **TINY)
    fused = build_model("pixel", "afa", input_size=64, **TINY)
    report = init_from_stage1(fused, single.state_dict())
    sd = fused.state_dict()
    assert report["loaded"] and all(k.startswith("trunks.") for k in report["loaded"])
    assert any(k.startswith("fusions.") for k in report["kept"]) and any(k.startswith("heads.") for k in report["kept"])
    for k in report["loaded"]:
        assert torch.equal(sd[k], single.state_dict()[k])
    head = "heads.seg.decoder.classifier.weight"
    assert not torch.equal(sd[head], single.state_dict()[head])
    whole = init_from_stage1(fused, single.state_dict(), heads=True)
    assert set(whole["loaded"]) == set(single.state_dict())
    assert all(k.startswith("fusions.") for k in whole["kept"])
    with pytest.raises(ValueError, match="missing"):
        init_from_stage1(fused, build_model("image", "none", input_size=64, **TINY).state_dict())
    with pytest.raises(ValueError, match="not from a single-task network .*fusions.layer4_0"):
        init_from_stage1(fused, fused.state_dict())
    with pytest.raises(ValueError, match="hard sharing"):
        init_from_stage1(build_model("pixel", "shared", input_size=64, **TINY), single.state_dict())


def test_param_groups_follow_the_reference_recipe():
    image = build_model("image", "afa", input_size=64, **TINY)
    groups = {g["name"]: g for g in image.param_groups(0.01)}
    assert groups["fusion"]["lr"] == pytest.approx(10.0) and groups["backbone"]["lr"] == pytest.approx(0.01)
    pixel = build_model("pixel", "afa", input_size=64, **TINY)
    groups = {g["name"]: g for g in pixel.param_groups(0.01, lr_mult={"fusion": 5})}
    assert groups["head"]["lr"] == pytest.approx(0.1) and groups["fusion"]["lr"] == pytest.approx(0.05)
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in pixel.parameters())
    for fusion in ("cross_stitch", "nddr"):  # Misra et al. / Gao et al.: the units at x100
        groups = {g["name"]: g for g in build_model("image", fusion, **TINY).param_groups(0.01)}
        assert groups["fusion"]["lr"] == pytest.approx(1.0)
    shared = {g["name"] for g in build_model("image", "shared", **TINY).param_groups(0.01)}
    assert shared == {"backbone", "head"}
    with pytest.raises(ValueError, match="unknown groups .*afa"):
        image.param_groups(0.01, lr_mult={"afa": 5})


def test_narrow_trunks_keep_resnet50s_layout_at_a_fraction_of_its_width():
    from models import model_from_config
    from models.backbone import Trunk

    full, narrow = Trunk(16, [1, 1, 1, 3]), Trunk(16, [1, 1, 1, 3], width=16)
    assert list(full.state_dict()) == list(narrow.state_dict())  # same modules, same names
    assert [narrow.stage_channels(s) for s in (1, 2, 3, 4)] == [64, 128, 256, 512]
    assert [full.stage_channels(s) for s in (1, 2, 3, 4)] == [256, 512, 1024, 2048]
    x = narrow.stem(torch.randn(1, 3, 32, 32))
    for s in (1, 2, 3, 4):
        x = getattr(narrow, f"layer{s}")(x)
        assert x.shape[1] == narrow.stage_channels(s)
    assert narrow.layer4[2].conv2.dilation == (8, 8)  # the multi-grid unit (2 x 4 at stride 16) at every width
    for bad in (0, 65):
        with pytest.raises(ValueError, match=f"width: 1 to 64 planes expected, got {bad}"):
            Trunk(16, width=bad)
    model = build_model("pixel", "afa", input_size=32, **TINY)
    assert model.config.to_dict()["width"] == tiny_trunk.WIDTH
    assert model.heads["seg"].aspp.convs[0][0].out_channels == 64  # 256 x 16 / 64
    rebuilt = model_from_config(model.config.to_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="width 64 only; this network has depths 1 1 1 3 and width 16"):
        model.load_backbone_weights({})
