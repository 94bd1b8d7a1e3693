"""Beyond two tasks: surface normals (transforms, loss and metrics by hand), every fusion at one, two and
three tasks, AFA's tied and pairwise relations, non-square inputs, and the multi-task delta both ways."""

import math

import numpy as np
import pytest
import tiny_trunk
import torch
import torch.nn.functional as F

from data import PixelTrainTransform
from engine.losses import normal_loss
from engine.metrics import NormalMeter, multitask_delta
from models import AFALayer, build_model, init_from_stage1
from models.fusion import FUSIONS

TINY = tiny_trunk.MODEL
SQRT2 = math.sqrt(2)


# -- surface normals ---------------------------------------------------------------------------


def normal_sample(h=8, w=10, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    normal = F.normalize(torch.randn(3, h, w, generator=g), dim=0)
    normal[:, :2, :3] = 0  # invalid (all-zero) pixels
    return {
        "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
        "seg": torch.randint(0, 5, (h, w), generator=g),
        "depth": torch.rand(1, h, w, generator=g) + 0.5,
        "normal": normal,
    }


@pytest.mark.parametrize("scale", [(0.55, 0.55), (1.7, 1.7)])
def test_a_resize_keeps_normals_unit_and_invalid_pixels_invalid(scale):
    torch.manual_seed(0)
    sample = normal_sample()
    out = PixelTrainTransform(crop_size=(6, 8), scale=scale, flip_p=0.0, jitter=None)(sample)
    n = out["normal"]
    assert n.shape == (3, 6, 8) and out["seg"].shape == (6, 8)
    norm = torch.linalg.vector_norm(n, dim=0)
    valid = norm > 0
    torch.testing.assert_close(norm[valid], torch.ones_like(norm[valid]))
    # every normal of the crop is one of the sample's vectors (nearest resampling: no blend with invalid zeros)
    source = {tuple(np.round(v, 5)) for v in sample["normal"].reshape(3, -1).T.numpy()}
    assert all(tuple(np.round(v, 5)) in source for v in n.reshape(3, -1).T.numpy())


def test_a_flip_negates_the_x_component_and_disparity_scales_with_the_width():
    torch.manual_seed(0)
    sample = normal_sample()
    flipped = PixelTrainTransform(crop_size=(8, 10), scale=(1.0, 1.0), flip_p=1.0, jitter=None)(sample)
    torch.testing.assert_close(flipped["normal"][0], -sample["normal"][0].flip(-1))
    torch.testing.assert_close(flipped["normal"][1:], sample["normal"][1:].flip(-1))
    # a doubling resize doubles disparity (pixels grow with the width) and keeps metric depth
    big = {**sample, "depth": torch.full((1, 8, 10), 3.0)}
    disparity = PixelTrainTransform(crop_size=(8, 10), scale=(2.0, 2.0), flip_p=0.0, jitter=None, disparity=True)
    metric = PixelTrainTransform(crop_size=(8, 10), scale=(2.0, 2.0), flip_p=0.0, jitter=None)
    assert torch.allclose(disparity(big)["depth"], torch.tensor(6.0))
    assert torch.allclose(metric(big)["depth"], torch.tensor(3.0))


def test_normal_loss_against_hand_values():
    # four pixels: identical, perpendicular, opposite, invalid truth; the second truth sums to 0 and is valid
    true = torch.tensor([[0.0, 0, 1], [1 / SQRT2, -1 / SQRT2, 0], [1.0, 0, 0], [0, 0, 0]]).T.reshape(1, 3, 1, 4)
    pred = torch.tensor([[0.0, 0, 1], [0, 0, 1], [-1.0, 0, 0], [0, 1, 0]]).T.reshape(1, 3, 1, 4)
    # cos: mean over the 3 valid pixels of 1 - cos = (0 + 1 + 2) / 3
    assert normal_loss(pred, true, "cos").item() == pytest.approx(1.0)
    # l1: summed over components, mean over valid pixels: (0 + (1/sqrt2 + 1/sqrt2 + 1) + 2) / 3
    assert normal_loss(pred, true, "l1").item() == pytest.approx((0 + (SQRT2 + 1) + 2) / 3)
    assert normal_loss(pred, torch.zeros_like(true)).item() == 0.0


def test_normal_metrics_are_pooled_over_every_valid_pixel():
    meter = NormalMeter()
    # batch 1: angles 0, 90 (a true vector whose components sum to 0: valid), invalid
    true = torch.tensor([[0.0, 0, 1], [1 / SQRT2, -1 / SQRT2, 0], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    pred = torch.tensor([[0.0, 0, 1], [0, 0, 1], [0, 0, 1]]).T.reshape(1, 3, 1, 3)
    meter.update(pred, true)
    # batch 2: angles 20 and 60 degrees, from unnormalised predictions (directions count)
    a, b = math.radians(20), math.radians(60)
    true2 = torch.tensor([[0.0, 0, 1], [0, 0, 1]]).T.reshape(1, 3, 1, 2)
    pred2 = torch.tensor([[math.sin(a), 0, math.cos(a)], [0, 3 * math.sin(b), 3 * math.cos(b)]]).T.reshape(1, 3, 1, 2)
    meter.update(pred2, true2)
    m = meter.compute()
    angles = np.array([0.0, 90.0, 20.0, 60.0])
    assert m["normal/mean"] == pytest.approx(angles.mean())
    assert m["normal/median"] == pytest.approx(np.median(angles), abs=1e-4)  # pooled: not a mean of batch medians
    assert m["normal/rmse"] == pytest.approx(math.sqrt((angles**2).mean()))
    assert (m["normal/a11"], m["normal/a22"], m["normal/a30"]) == pytest.approx((0.25, 0.5, 0.5))


# -- every fusion for N tasks ---------------------------------------------------------------------

TASKS = {1: {"seg": 5}, 2: {"seg": 5, "depth": 1}, 3: {"seg": 5, "depth": 1, "normal": 3}}


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_runs_for_one_two_and_three_tasks(fusion, n):
    torch.manual_seed(0)
    tasks = TASKS[n]
    unit = ["normal"] if "normal" in tasks else []
    model = build_model("pixel", fusion, input_size=33, **TINY, tasks=tasks, unit_tasks=unit)
    out = model(torch.randn(2, 3, 33, 33))
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (2, c, 33, 33) for t, c in tasks.items()}
    if unit:
        torch.testing.assert_close(torch.linalg.vector_norm(out["normal"], dim=1), torch.ones(2, 33, 33))
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if n == 1:
        assert len(model.fusions) == 0  # one task: nothing to fuse, the single-task network
    if fusion not in ("none", "shared"):  # stage 2 from a stage-1 network of the same tasks
        single = build_model("pixel", "none", input_size=33, **TINY, tasks=tasks, unit_tasks=unit)
        report = init_from_stage1(model, single.state_dict())
        assert report["loaded"] and all(k.startswith("trunks.") for k in report["loaded"])


def test_three_task_units_start_at_point9_and_split_point1_between_the_others():
    model = build_model("image", "cross_stitch", input_size=64, **TINY, tasks={"a": 2, "b": 3, "c": 4})
    unit = model.fusions["layer2"]
    assert unit.same["a"].mean().item() == pytest.approx(0.9)
    assert unit.other["a_from_c"].mean().item() == pytest.approx(0.05)
    assert set(unit.other) == {f"{t}_from_{u}" for t in "abc" for u in "abc" if u != t}
    nddr = build_model("image", "nddr", input_size=64, **TINY, tasks={"a": 2, "b": 3, "c": 4})
    w = nddr.fusions["layer1"].conv["b"].weight[..., 0, 0]  # (C, 3C): task b's own block is the middle one
    c = w.shape[0]
    assert torch.allclose(w[:, c : 2 * c].diagonal(), torch.tensor(0.9))
    assert torch.allclose(w[:, :c].diagonal(), torch.tensor(0.05)) and torch.allclose(
        w[:, 2 * c :].diagonal(), torch.tensor(0.05)
    )


def test_tied_afa_equals_pairwise_afa_with_tied_values_and_the_paper_at_two_tasks():
    torch.manual_seed(0)
    xs = [torch.randn(2, 8, 3, 3) for _ in range(3)]
    tied = AFALayer(8, (3, 3), grad_mode="joint", tasks=("a", "b", "c"))
    pairwise = AFALayer(8, (3, 3), grad_mode="joint", tasks=("a", "b", "c"), relation="pairwise")
    pairwise.load_state_dict({**pairwise.state_dict(), **tied.state_dict()}, strict=True)
    from models.afa import tie_pairwise_

    tie_pairwise_(pairwise.cam)
    tie_pairwise_(pairwise.sam)
    for y_t, y_p in zip(tied.fuse(*xs), pairwise.fuse(*xs)):
        torch.testing.assert_close(y_t, y_p)
    # the tied weights of three tasks: w_self and the same w_other for each of the two others, summing to 1
    w = tied.cam.weights(*xs)
    torch.testing.assert_close(w[0][1], w[0][2])
    torch.testing.assert_close(w[0][0] + w[0][1] + w[0][2], torch.ones_like(w[0][0]))
    # at two tasks, the original's formula: y_1 = w_self x_1 + w_other x_2, y_2 = w_self x_2 + w_other x_1
    two = AFALayer(8, (3, 3), grad_mode="joint")
    a, b = xs[:2]
    w2 = two.cam.weights(a, b)
    y1, y2 = two.cam(a, b)
    assert torch.equal(y1, w2[0][0] * a + w2[0][1] * b) and torch.equal(y2, w2[0][0] * b + w2[0][1] * a)


def test_protect_shields_the_named_branches_among_three():
    torch.manual_seed(0)
    layer = AFALayer(8, (3, 3), grad_mode="protect", protect_tasks=(0, 2), tasks=("a", "b", "c"))
    xs = [torch.randn(2, 8, 3, 3, requires_grad=True) for _ in range(3)]
    ys = layer.fuse(*xs)
    ys[1].square().sum().backward()  # task b's loss alone
    assert xs[0].grad is None and xs[2].grad is None  # task b's loss does not reach the shielded branches
    assert torch.count_nonzero(xs[1].grad) > 0
    xs[1].grad = None
    layer.fuse(*xs)[0].square().sum().backward()  # task a's loss reaches a and the unshielded b, not c
    assert torch.count_nonzero(xs[0].grad) > 0 and torch.count_nonzero(xs[1].grad) > 0 and xs[2].grad is None


def test_non_square_inputs_build_sam_for_the_maps_height_and_width():
    model = build_model("pixel", "afa", input_size=(33, 65), **TINY)
    assert model.config.input_size == [33, 65] and model.fusions["layer4_0"].sam.size == (3, 5)
    out = model.eval()(torch.randn(1, 3, 33, 65))
    assert out["seg"].shape == (1, 40, 33, 65)
    assert build_model("pixel", "afa", input_size=(33, 33), **TINY).config.input_size == 33  # a square
    with pytest.raises(ValueError, match="built for 3x5 feature maps but got 3x3"):
        model(torch.randn(1, 3, 33, 33))


def test_the_multitask_delta_two_ways_by_hand():
    single = {"seg/miou": 0.40, "seg/pixel_acc": 0.50, "depth/abs_err": 0.50, "normal/mean": 20.0}
    fused = {"seg/miou": 0.44, "seg/pixel_acc": 0.50, "depth/abs_err": 0.40, "normal/mean": 22.0}
    d = multitask_delta(fused, single)
    # per metric: +10, 0, +20 (an error fell), -10 (an error rose)
    assert (
        d["delta/seg/miou"],
        d["delta/seg/pixel_acc"],
        d["delta/depth/abs_err"],
        d["delta/normal/mean"],
    ) == pytest.approx((10.0, 0.0, 20.0, -10.0))
    assert d["delta/mean"] == pytest.approx((10 + 0 + 20 - 10) / 4)  # flat over metrics
    assert d["delta/mean_task"] == pytest.approx(((10 + 0) / 2 + 20 - 10) / 3)  # over tasks


# -- training, evaluation and resume with three tasks; Cityscapes ------------------------------------


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    from data.synthetic import write_cityscapes

    return write_cityscapes(tmp_path_factory.mktemp("cs") / "cityscapes", n_train=8, n_val=2, size=(40, 80))


def pixel_args(root, tmp, *extra):
    import train_pixel

    return train_pixel.get_args_parser().parse_args(
        [
            "--data-root",
            str(root),
            "--crop-size",
            "32",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--limit-batches",
            "2",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--pretrained",
            "none",
            *tiny_trunk.FLAGS,
            "--out",
            str(tmp / "last.pth"),
            "--logdir",
            str(tmp / "run"),
            *extra,
        ]
    )


def test_three_tasks_train_resume_exactly_and_evaluate_from_saved_predictions(mtan, tmp_path, monkeypatch):
    import eval as eval_script
    import train_pixel
    from data import NYUv2
    from engine import train as trainer
    from engine.checkpoint import load_checkpoint
    from engine.metrics import normal_angles

    three = ["--tasks", "seg", "depth", "normal", "--fusion", "afa", "--epochs", "2", "--limit-batches", "3"]
    full = tmp_path / "full"
    assert train_pixel.main(pixel_args(mtan, full, *three)) == 0
    ck = load_checkpoint(full / "last.pth")
    assert ck["model_config"]["tasks"] == {"seg": 13, "depth": 1, "normal": 3}
    assert ck["model_config"]["unit_tasks"] == ["normal"]
    assert {"fusion/layer4_0/cam/w/normal/seg", "train/loss/normal", "val/normal/median"} <= set(
        __import__("json").loads((full / "run" / "log.jsonl").read_text().splitlines()[-1])
    )

    cut, calls = tmp_path / "cut", {"n": 0}

    def stop_in_epoch_2(stop, dist, at_log):
        calls["n"] += 1
        return calls["n"] == 4

    monkeypatch.setattr(trainer, "should_stop", stop_in_epoch_2)
    assert train_pixel.main(pixel_args(mtan, cut, *three)) == 128 + 15
    monkeypatch.undo()
    assert train_pixel.main(pixel_args(mtan, cut, *three, "--resume", str(cut / "last.pth"))) == 0
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(cut / "last.pth")
    assert a["train_state"] == b["train_state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume is not exact"

    out, preds = tmp_path / "m.json", tmp_path / "preds"
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                [
                    "--checkpoint",
                    str(full / "last_best.pth"),
                    "--data-root",
                    str(mtan),
                    "--json",
                    str(out),
                    "--save-predictions",
                    str(preds),
                    "--workers",
                    "0",
                    "--device",
                    "cpu",
                ]
            )
        )
        == 0
    )
    metrics = __import__("json").loads(out.read_text())
    angles = []
    for s in NYUv2(mtan, "test"):
        saved = np.load(preds / f"{s['index']}.npz")
        assert saved["normal"].shape == (3, 48, 64) and saved["seg"].shape == saved["depth"].shape == (48, 64)
        angles.append(normal_angles(torch.from_numpy(saved["normal"])[None], s["normal"][None]).numpy())
    angles = np.concatenate(angles)
    assert metrics["normal/mean"] == pytest.approx(angles.mean(), rel=1e-6)
    assert metrics["normal/median"] == pytest.approx(np.median(angles), rel=1e-5)
    assert metrics["normal/rmse"] == pytest.approx(np.sqrt((angles**2).mean()), rel=1e-6)
    assert metrics["normal/a30"] == pytest.approx((angles < 30).mean())


def test_a_task_the_dataset_lacks_is_one_line(tmp_path, capsys):
    import train_pixel
    from data.prepare_nyuv2 import prepare_nyuv2
    from data.synthetic import write_nyuv2

    write_nyuv2(tmp_path / "raw", n=6, frame_size=(32, 40))
    nyu = prepare_nyuv2(
        tmp_path / "raw" / "nyu_depth_v2_labeled.mat", tmp_path / "raw" / "splits.mat", tmp_path / "nyu", progress=False
    )
    assert train_pixel.main(pixel_args(nyu, tmp_path / "r", "--tasks", "seg", "normal")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no surface normals (only NYUv2's MTAN folder has them)" in err


def test_cityscapes_trains_on_non_square_crops_and_evaluates_disparity(cityscapes, tmp_path):
    import eval as eval_script
    import train_pixel
    from engine.checkpoint import load_checkpoint

    run = tmp_path / "cs"
    assert (
        train_pixel.main(
            pixel_args(
                cityscapes,
                run,
                "--dataset",
                "cityscapes",
                "--seg-classes",
                "7",
                "--crop-size",
                "32",
                "64",
                "--fusion",
                "afa",
            )
        )
        == 0
    )
    ck = load_checkpoint(run / "last.pth")
    assert ck["model_config"]["input_size"] == [32, 64] and ck["model_config"]["tasks"] == {"seg": 7, "depth": 1}
    assert ck["data"]["dataset"] == "cityscapes" and "disparity" in ck["data"]["units"]["depth"]
    out = tmp_path / "m.json"
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                [
                    "--checkpoint",
                    str(run / "last_best.pth"),
                    "--data-root",
                    str(cityscapes),
                    "--json",
                    str(out),
                    "--workers",
                    "0",
                    "--device",
                    "cpu",
                ]
            )
        )
        == 0
    )
    metrics = __import__("json").loads(out.read_text())
    assert {"seg/miou", "depth/abs_err"} <= set(metrics) and math.isfinite(metrics["depth/abs_err"])
