"""Training scripts, eval.py and the engine: smoke runs on tiny official-format data, exact
resume, checkpoint safety, failure behaviour, metrics against hand-computed values, DDP.

Networks are tiny (crop 32-64; one bottleneck per stage, three in stage 4: --depths 1 1 1 3), so these runs
stay short on 2 cores; the full ResNet-50 is built in tests/test_models.py and by the demo.
"""

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_trunk
import torch

import eval as eval_script
import train_image
import train_pixel
from engine import train as trainer
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.metrics import DepthMeter, ImageMeter, SegMeter, multitask_delta

REPO = Path(__file__).resolve().parents[1]
PIXEL_KEYS = [
    "seg/miou",
    "seg/pixel_acc",
    "seg/mean_class_acc",
    "seg/fwiou",
    "depth/abs_err",
    "depth/rel_err",
    "depth/sq_rel",
    "depth/log10",
    "depth/rmse",
    "depth/rmse_log",
    "depth/delta1",
    "depth/delta2",
    "depth/delta3",
]
IMAGE_KEYS = ["gender/acc", "age/acc", "age/one_off"]
TINY = tiny_trunk.FLAGS


def pixel_args(nyu, tmp, *extra):
    return train_pixel.get_args_parser().parse_args(
        [
            "--data-root",
            str(nyu),
            "--crop-size",
            "64",
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
            *TINY,
            "--out",
            str(tmp / "pixel_last.pth"),
            "--logdir",
            str(tmp / "run"),
            *extra,
        ]
    )


def image_args(adience, tmp, *extra):
    return train_image.get_args_parser().parse_args(
        [
            "--data-root",
            str(adience),
            "--crop-size",
            "32",
            "--batch-size",
            "4",
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
            *TINY,
            "--out",
            str(tmp / "image_last.pth"),
            "--logdir",
            str(tmp / "run"),
            *extra,
        ]
    )


def event_scalars(logdir: Path) -> set[str]:
    """Scalar tags in the TensorBoard event files (TFRecord framing: length, crc, record, crc)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for f in logdir.glob("events.out.tfevents.*"):
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + n + 4
    return tags


def test_pixel_stage1_stage2_eval_and_saved_predictions(nyu, tmp_path, capsys):
    s1 = tmp_path / "s1"
    assert train_pixel.main(pixel_args(nyu, s1, "--fusion", "none", "--log-every", "1")) == 0
    assert (s1 / "pixel_last.pth").is_file() and (s1 / "pixel_best.pth").is_file()
    assert {"loss/seg", "loss/depth", "val/seg/miou"} <= event_scalars(s1 / "run")
    record = json.loads((s1 / "run" / "log.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and set(f"val/{k}" for k in PIXEL_KEYS) <= set(record)

    s2 = tmp_path / "s2"
    assert train_pixel.main(pixel_args(nyu, s2, "--fusion", "afa", "--init", str(s1 / "pixel_best.pth"))) == 0
    assert "init from" in capsys.readouterr().out
    ck = load_checkpoint(s2 / "pixel_last.pth")
    assert ck["model_config"]["fusion"] == "afa" and ck["model_config"]["input_size"] == 64

    out_json, preds = tmp_path / "m.json", tmp_path / "preds"
    eval_args = eval_script.get_args_parser().parse_args(
        [
            "--checkpoint",
            str(s2 / "pixel_best.pth"),
            "--data-root",
            str(nyu),
            "--json",
            str(out_json),
            "--save-predictions",
            str(preds),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--plot",
            str(tmp_path / "plots"),
        ]
    )
    assert eval_script.main(eval_args) == 0
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == PIXEL_KEYS
    assert (tmp_path / "plots" / "qualitative.png").is_file() and (tmp_path / "plots" / "curves.png").is_file()

    # Recompute the metrics independently from the saved predictions and the prepared ground truth.
    from data import NYUv2

    test = NYUv2(nyu, "test")
    assert sorted(int(p.stem) for p in preds.glob("*.npz")) == sorted(test.indices)
    conf = np.zeros((40, 40), np.int64)
    abs_err, n = 0.0, 0
    for s in test:
        p = np.load(preds / f"{s['index']}.npz")
        assert p["seg"].shape == p["depth"].shape == tuple(s["seg"].shape)
        seg, keep = s["seg"].numpy(), s["seg"].numpy() != 255
        np.add.at(conf, (seg[keep], p["seg"][keep]), 1)
        gt = s["depth"][0].numpy().astype(np.float64)
        valid = gt > 0
        abs_err += np.abs(np.maximum(p["depth"][valid].astype(np.float64), 1e-3) - gt[valid]).sum()
        n += valid.sum()
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    assert metrics["seg/miou"] == pytest.approx(np.mean(np.diag(conf)[union > 0] / union[union > 0]), rel=1e-6)
    assert metrics["seg/pixel_acc"] == pytest.approx(np.trace(conf) / conf.sum(), rel=1e-6)
    assert metrics["depth/abs_err"] == pytest.approx(abs_err / n, rel=1e-5)


def test_image_stages_eval_csv_and_baseline_delta(adience, tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    assert train_image.main(image_args(adience, s1, "--fusion", "none", "--test-fold", "1")) == 0
    assert (
        train_image.main(
            image_args(adience, s2, "--fusion", "afa", "--test-fold", "1", "--init", str(s1 / "image_best.pth"))
        )
        == 0
    )
    single_json, afa_json, preds = tmp_path / "single.json", tmp_path / "afa.json", tmp_path / "preds"
    common = ["--data-root", str(adience), "--workers", "0", "--device", "cpu"]
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                ["--checkpoint", str(s1 / "image_best.pth"), "--json", str(single_json), *common]
            )
        )
        == 0
    )
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                [
                    "--checkpoint",
                    str(s2 / "image_best.pth"),
                    "--json",
                    str(afa_json),
                    "--save-predictions",
                    str(preds),
                    "--baseline",
                    str(single_json),
                    "--plot",
                    str(tmp_path / "plots"),
                    *common,
                ]
            )
        )
        == 0
    )
    single, afa = json.loads(single_json.read_text()), json.loads(afa_json.read_text())
    assert list(single) == IMAGE_KEYS
    assert afa["delta/gender/acc"] == pytest.approx(
        100 * (afa["gender/acc"] - single["gender/acc"]) / single["gender/acc"]
    )
    rows = (preds / "predictions.csv").read_text().splitlines()
    assert rows[0] == "path,gender_true,gender_pred,age_true,age_pred"
    body = [r.split(",") for r in rows[1:]]
    assert all(r[0].startswith("aligned/") for r in body)  # the checkpoint's test fold 1 was used
    assert afa["gender/acc"] == pytest.approx(np.mean([r[1] == r[2] for r in body]))
    assert afa["age/one_off"] == pytest.approx(np.mean([abs(int(r[3]) - int(r[4])) <= 1 for r in body]))
    assert (tmp_path / "plots" / "age_confusion.png").is_file()


def test_resume_is_bit_exact_also_mid_epoch(nyu, tmp_path, monkeypatch):
    """Uninterrupted 2 epochs vs. stopped in the middle of epoch 2, then resumed (dropout included)."""
    extra = ["--fusion", "afa", "--epochs", "2", "--limit-batches", "3", "--seed", "3"]
    full = tmp_path / "full"
    assert train_pixel.main(pixel_args(nyu, full, *extra)) == 0

    cut = tmp_path / "cut"
    calls = {"n": 0}

    def stop_after_fourth_batch(stop, dist, at_log):
        calls["n"] += 1
        return calls["n"] == 4  # epoch 2, after its first batch

    monkeypatch.setattr(trainer, "should_stop", stop_after_fourth_batch)
    assert train_pixel.main(pixel_args(nyu, cut, *extra)) == 128 + signal.SIGTERM
    ts = load_checkpoint(cut / "pixel_last.pth")["train_state"]
    assert (ts["epoch"], ts["batch_in_epoch"], ts["iteration"]) == (1, 1, 4)
    monkeypatch.undo()
    assert train_pixel.main(pixel_args(nyu, cut, *extra, "--resume", str(cut / "pixel_last.pth"))) == 0
    a, b = load_checkpoint(full / "pixel_last.pth"), load_checkpoint(cut / "pixel_last.pth")
    assert a["train_state"] == b["train_state"] and a["train_state"]["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])


@pytest.mark.slow
def test_sigterm_writes_a_resumable_checkpoint(adience, tmp_path):
    out = tmp_path / "image_last.pth"
    cmd = [
        sys.executable,
        "train_image.py",
        "--data-root",
        str(adience),
        "--crop-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "50",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--pretrained",
        "none",
        *TINY,
        "--out",
        str(out),
        "--logdir",
        str(tmp_path / "run"),
        "--log-every",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    while "it/s" not in seen and "s/it" not in seen:  # training has started
        ch = proc.stdout.read(1)
        assert ch, f"training ended early: {seen[-500:]}"
        seen += ch
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, seen + rest
    assert "received SIGTERM" in rest
    ts = load_checkpoint(out)["train_state"]
    assert ts["iteration"] >= 1 and ts["epoch"] == 0 and ts["batch_in_epoch"] == ts["iteration"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(adience, tmp_path, monkeypatch, capsys):
    args = image_args(adience, tmp_path, "--epochs", "2")
    from families.base import Family

    real = Family.__init__

    def poisoned_family(self, *a, **kw):
        real(self, *a, **kw)
        losses, calls = self.losses, {"n": 0}

        def nan_on_third_call(out, batch):
            calls["n"] += 1
            result = losses(out, batch)
            if calls["n"] == 3:
                result["age"] = result["age"] * float("nan")
            return result

        self.losses = nan_on_third_call

    monkeypatch.setattr(Family, "__init__", poisoned_family)
    assert train_image.main(args) == 3
    assert "non-finite age loss at iteration 2" in capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "image_last.pth")  # written after epoch 1, never overwritten
    assert ck["train_state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_previous_file(adience, tmp_path, monkeypatch, capsys):
    import engine.checkpoint as checkpoint

    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *a, **kw):  # epoch 1 writes last + best; epoch 2's write fails midway
        calls.append(1)
        if len(calls) > 2:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0\nmore")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_disk_full)
    assert train_image.main(image_args(adience, tmp_path, "--epochs", "2")) == 4
    err = capsys.readouterr().err  # also holds tqdm's progress bars
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err
    assert "image_last.pth: could not write it (" in errors[0] and errors[0].endswith("previous file is kept; stopped")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "image_last.pth")["train_state"]["epoch"] == 1
    assert not list(tmp_path.glob(".image_last.pth.*"))  # no temporary file left behind


def test_user_errors_exit_2_with_one_line(adience, nyu, tmp_path, capsys):
    assert train_image.main(image_args(tmp_path / "missing", tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and len(err.splitlines()) == 1
    s1 = tmp_path / "s1"
    assert train_image.main(image_args(adience, s1, "--fusion", "afa")) == 0
    assert train_image.main(image_args(adience, tmp_path, "--fusion", "afa", "--init", str(s1 / "image_last.pth"))) == 2
    assert "not a stage-1 checkpoint" in capsys.readouterr().err
    assert train_pixel.main(pixel_args(nyu, tmp_path, "--fusion", "afa", "--init", str(s1 / "image_last.pth"))) == 2
    assert "kind 'image' (expected 'pixel')" in capsys.readouterr().err
    # The best file holds the model only (half the disk); resuming from it points to the _last file.
    best = load_checkpoint(s1 / "image_best.pth")
    assert "optimizer" not in best and "rng" not in best and best["model_config"]["fusion"] == "afa"
    assert (s1 / "image_best.pth").stat().st_size < 0.6 * (s1 / "image_last.pth").stat().st_size
    assert train_image.main(image_args(adience, s1, "--resume", str(s1 / "image_best.pth"), "--epochs", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert "image_best.pth" in err and "_last.pth" in err and len(err.splitlines()) == 1


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_with_code_are_refused_and_corrupt_ones_named(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="evil.pth: refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}}, good)
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".good.pth.*"))  # the temporary file was renamed, not left behind
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt.pth: corrupt"):
        load_checkpoint(corrupt)
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(["--checkpoint", str(evil), "--data-root", str(tmp_path)])
        )
        == 2
    )
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(tmp_path / "plain.pkl")


def test_curve_panels_group_metrics_by_direction():
    from engine.plots import curve_panels

    pixel = (
        ["epoch", "train/loss/seg", "train/loss/depth", "train/weight/seg", "train/weight/depth"]
        + [f"val/{k}" for k in PIXEL_KEYS]
        + ["val/score"]
    )
    (_, train, _), (_, weights, _), (_, higher, lin), (_, lower, log) = curve_panels(pixel)
    assert train == ["train/loss/seg", "train/loss/depth"] and not lin and log
    assert weights == ["train/weight/seg", "train/weight/depth"]
    assert higher == [
        "val/seg/miou",
        "val/seg/pixel_acc",
        "val/seg/mean_class_acc",
        "val/seg/fwiou",
        "val/depth/delta1",
        "val/depth/delta2",
        "val/depth/delta3",
        "val/score",
    ]
    assert lower == [
        "val/depth/abs_err",
        "val/depth/rel_err",
        "val/depth/sq_rel",
        "val/depth/log10",
        "val/depth/rmse",
        "val/depth/rmse_log",
    ]
    image = ["epoch", "train/loss/gender", "train/loss/age"] + [f"val/{k}" for k in IMAGE_KEYS]
    assert [title for title, _, _ in curve_panels(image)] == ["training loss", "validation (higher is better)"]


def test_pixel_meter_against_hand_computed_values():
    seg, depth = SegMeter(3), DepthMeter()
    seg_true = torch.tensor([[0, 0, 1, 1, 2, 255]])
    seg_pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    depth_true = torch.tensor([[1.0, 2.0, 4.0, 0.0, 1.0, 1.0]])
    depth_pred = torch.tensor([[1.0, 1.0, 5.0, 3.0, -1.0, 1.1]])
    seg.update(seg_pred, seg_true)
    depth.update(depth_pred, depth_true)
    m = {**seg.compute(), **depth.compute()}
    # confusion (rows true): [[1,1,0],[0,2,0],[1,0,0]]: IoU 1/3, 2/3, 0 (class 2 has union 1)
    assert m["seg/miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["seg/pixel_acc"] == pytest.approx(3 / 5)
    assert m["seg/mean_class_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["seg/fwiou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    # valid depth pixels: gt (1, 2, 4, 1, 1), pred (1, 1, 5, 0.001 after clamping, 1.1)
    gt, pred = np.array([1, 2, 4, 1, 1.0]), np.array([1, 1, 5, 1e-3, 1.1])
    err = pred - gt
    assert m["depth/abs_err"] == pytest.approx(np.abs(err).mean())
    assert m["depth/rel_err"] == pytest.approx((np.abs(err) / gt).mean())
    assert m["depth/sq_rel"] == pytest.approx((err**2 / gt).mean())
    assert m["depth/rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert m["depth/log10"] == pytest.approx(np.abs(np.log10(pred) - np.log10(gt)).mean())
    assert m["depth/rmse_log"] == pytest.approx(np.sqrt(((np.log(pred) - np.log(gt)) ** 2).mean()))
    ratio = np.maximum(pred / gt, gt / pred)
    assert m["depth/delta1"] == pytest.approx(2 / 5) and m["depth/delta1"] == pytest.approx((ratio < 1.25).mean())
    assert m["depth/delta3"] == pytest.approx((ratio < 1.25**3).mean())


def test_image_meter_and_delta():
    meter = ImageMeter()
    meter.update(
        torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), torch.tensor([3, 4, 7, 0]), torch.tensor([3, 5, 5, 0])
    )
    m = meter.compute()
    assert m == {"gender/acc": 0.75, "age/acc": 0.5, "age/one_off": 0.75}
    assert meter.age_confusion[5, 4] == 1 and meter.age_confusion[5, 7] == 1
    d = multitask_delta({"depth/rmse": 0.9, "seg/miou": 0.44}, {"depth/rmse": 1.0, "seg/miou": 0.4})
    assert d["delta/depth/rmse"] == pytest.approx(10.0) and d["delta/seg/miou"] == pytest.approx(10.0)
    assert d["delta/mean"] == pytest.approx(10.0)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(adience, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "train_image.py",
        "--data-root",
        str(adience),
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
        "--fusion",
        "afa",
        *TINY,
        "--out",
        str(tmp_path / "ddp_last.pth"),
        "--logdir",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ck = load_checkpoint(tmp_path / "ddp_last.pth")
    assert ck["train_state"]["iteration"] == 2 and ck["args"]["fusion"] == "afa"
    assert done.stdout.count("done:") == 1  # rank 0 alone reports and writes


def test_small_training_set_uses_smaller_batches(adience, tmp_path, capsys):
    args = image_args(adience, tmp_path, "--batch-size", "500", "--limit-batches", "1")
    assert train_image.main(args) == 0
    assert "fewer than --batch-size 500: using batches of" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "image_last.pth")["train_state"]["iteration"] == 1


def test_depth_losses_use_valid_pixels_only():
    from engine.losses import depth_loss

    pred = torch.tensor([[[[1.0, 2.0, 5.0, 9.0]]]])
    target = torch.tensor([[[[1.5, 2.0, 1.0, 0.0]]]])  # the last pixel has no ground truth
    e = np.array([0.5, 0.0, 4.0])
    c = 0.2 * 4.0  # berHu threshold: 0.2 * max |e| over valid pixels
    berhu = np.where(np.abs(e) <= c, np.abs(e), (e**2 + c**2) / (2 * c)).mean()
    assert depth_loss(pred, target, "berhu").item() == pytest.approx(berhu)
    assert depth_loss(pred, target, "l1").item() == pytest.approx(np.abs(e).mean())
    assert depth_loss(pred, target, "mse").item() == pytest.approx((e**2).mean())
    assert depth_loss(pred, torch.zeros_like(target)).item() == 0.0


def test_precise_bn_replaces_running_stats_by_batch_averages():
    from engine.distributed import DistInfo

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [{"image": torch.randn(2, 3, 5, 5) * (i + 1) + i} for i in range(3)]
    from engine.setup import recompute_bn_stats

    recompute_bn_stats(model, iter(batches[:2]), torch.device("cpu"), "none", False, DistInfo())
    with torch.no_grad():
        feats = [model[0](b["image"]) for b in batches[:2]]
    bn = model[1]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1 and model.training


def test_pretrained_errors_are_one_line(adience, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "not_weights.pth"
    bad.write_bytes(b"garbage")
    args = image_args(adience, tmp_path)
    args.pretrained = "imagenet"
    assert train_image.main(args) == 2  # the tiny trunk: refused before any download
    err = capsys.readouterr().err
    assert "fit depths 3 4 6 3 and width 64 only" in err and "(use --pretrained none)" in err
    assert len(err.strip().splitlines()) == 1

    args = image_args(adience, tmp_path)
    args.pretrained, args.depths, args.width = str(bad), None, None  # ResNet-50 from here on
    assert train_image.main(args) == 2
    err = capsys.readouterr().err
    assert "not_weights.pth'" in err and "not a loadable state dict" in err and len(err.strip().splitlines()) == 1

    class Offline:  # stands in for torchvision's weights enum: the download fails as without network
        class IMAGENET1K_V1:  # noqa: N801
            @staticmethod
            def get_state_dict(progress=True):
                raise OSError("network unreachable")

    monkeypatch.setattr("models.backbone.ResNet50_Weights", Offline)
    args = image_args(adience, tmp_path)
    args.pretrained, args.depths, args.width = "imagenet", None, None
    assert train_image.main(args) == 2
    err = capsys.readouterr().err
    assert "could not get torchvision's ResNet-50 weights" in err and len(err.strip().splitlines()) == 1
