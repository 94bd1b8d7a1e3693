"""The comparison in training: every method through its stages, DWA's logged weights, and exact
resume with the stateful weightings (tiny trunks, official-format fixtures)."""

import json
import math
import signal

import pytest
import tiny_trunk
import torch

import train_image
from engine import train as trainer
from engine.checkpoint import load_checkpoint
from engine.logger import read_log

TINY = tiny_trunk.FLAGS


def image(adience, run, *extra):
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
            str(run / "x_last.pth"),
            "--logdir",
            str(run),
            *extra,
        ]
    )


def test_every_method_trains_through_its_stages(adience, tmp_path):
    s1 = tmp_path / "none"
    assert train_image.main(image(adience, s1, "--fusion", "none")) == 0
    assert load_checkpoint(s1 / "x_last.pth")["args"]["weighting"] is None  # default: equal for the pair
    assert read_log(s1 / "log.jsonl")[0]["train/weight/age"] == 1.0
    for fusion in ("cross_stitch", "nddr", "afa"):
        run = tmp_path / fusion
        assert train_image.main(image(adience, run, "--fusion", fusion, "--init", str(s1 / "x_best.pth"))) == 0
        ck = load_checkpoint(run / "x_last.pth")
        assert ck["model_config"]["fusion"] == fusion and "weighting" in ck
        rec = read_log(run / "log.jsonl")[0]
        assert {"train/loss/gender", "train/loss/age", "train/weight/gender"} <= set(rec)
        assert any(k.startswith("fusion/layer4") and k.endswith("grad_in/age") for k in rec), sorted(rec)
    # hard sharing trains from ImageNet (here: random) weights; --init is refused in one line
    assert train_image.main(image(adience, tmp_path / "shared", "--fusion", "shared")) == 0
    assert (
        train_image.main(image(adience, tmp_path / "shared2", "--fusion", "shared", "--init", str(s1 / "x_best.pth")))
        == 2
    )
    assert train_image.main(image(adience, tmp_path / "gn", "--fusion", "shared", "--weighting", "gradnorm")) == 0
    assert train_image.main(image(adience, tmp_path / "gn0", "--weighting", "gradnorm")) == 2  # none shares nothing


def test_dwa_weights_follow_the_formula_from_the_logged_epoch_losses(adience, tmp_path):
    run = tmp_path / "dwa"
    assert (
        train_image.main(
            image(adience, run, "--fusion", "afa", "--epochs", "4", "--weighting", "dwa", "--dwa-temp", "2")
        )
        == 0
    )
    log = read_log(run / "log.jsonl")
    tasks = ["gender", "age"]
    for e in (0, 1):
        assert [log[e][f"train/weight/{t}"] for t in tasks] == [1.0, 1.0]
    for e in (2, 3):
        r = [log[e - 1][f"train/loss/{t}"] / log[e - 2][f"train/loss/{t}"] for t in tasks]
        z = sum(math.exp(x / 2) for x in r)
        expected = [2 * math.exp(x / 2) / z for x in r]
        assert [log[e][f"train/weight/{t}"] for t in tasks] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weighting", ["dwa", "uncertainty"])
def test_resume_after_a_signal_is_bit_exact_with_stateful_weightings(adience, tmp_path, monkeypatch, weighting):
    def args(run, *extra):
        flags = ["--fusion", "cross_stitch", "--weighting", weighting, "--seed", "5", "--epochs", "3"]
        return image(adience, run, *flags, *extra)

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train_image.main(args(full)) == 0
    calls = {"n": 0}

    def stop_in_epoch_3(stop, dist, at_log):
        calls["n"] += 1
        return calls["n"] == 5  # after the first batch of epoch 3, where DWA's history matters

    monkeypatch.setattr(trainer, "should_stop", stop_in_epoch_3)
    assert train_image.main(args(cut)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert train_image.main(args(cut, "--resume", str(cut / "x_last.pth"))) == 0
    a, b = load_checkpoint(full / "x_last.pth"), load_checkpoint(cut / "x_last.pth")
    assert json.dumps(a["train_state"]) == json.dumps(b["train_state"])
    for part in ("model", "weighting"):
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y, (part, k)
    la, lb = read_log(full / "log.jsonl"), read_log(cut / "log.jsonl")
    assert [r["train/weight/age"] for r in la] == [r["train/weight/age"] for r in lb]
