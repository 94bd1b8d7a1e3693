"""Gradient methods in training (engine/method_step.py): which parameters are shared, the step against
plain training, fp16 unscaling and skipping, a run per method with two and three tasks, exact resume
with Nash-MTL and FAMO, the refusals, and torchrun with 2 processes against 1 (tiny trunks)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_trunk
import torch

import train_image
import train_pixel
from bench import random_batch, recipe
from engine import train as trainer
from engine.checkpoint import load_checkpoint
from engine.gradients import GRADIENT_METHODS
from engine.logger import read_log
from engine.method_step import FamoStep, GradientStep, make_step
from engine.step import TrainStep
from engine.weighting import EqualWeighting, GradientMethod
from families import family
from models import build_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["--depths", "1", "1", "1", "1", "--width", str(tiny_trunk.WIDTH)]  # one block per stage: one AFA layer
COMMON = ["--batch-size", "2", "--epochs", "1", "--limit-batches", "2", "--workers", "0", "--device", "cpu"]
COMMON += ["--pretrained", "none", *TINY]


def image(root, run, *extra):
    argv = ["--data-root", str(root), "--crop-size", "32", *COMMON, "--out", str(run / "last.pth")]
    return train_image.get_args_parser().parse_args([*argv, "--logdir", str(run), *extra])


def pixel(root, run, *extra):
    argv = ["--data-root", str(root), "--crop-size", "32", *COMMON, "--out", str(run / "last.pth")]
    return train_pixel.get_args_parser().parse_args([*argv, "--logdir", str(run), *extra])


def tiny(fusion, **options):
    torch.manual_seed(0)
    return build_model("image", fusion, input_size=32, depths=[1, 1, 1, 1], width=tiny_trunk.WIDTH, **options)


def step_for(model, weighting, lr=0.1, **kwargs):
    fam = family("image")(recipe("image"))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return make_step(model, fam, opt, weighting, **kwargs), opt


def batch(model):
    return random_batch(model.config.to_dict(), 4, torch.device("cpu"), False, seed=1)


def ids(params):
    return {id(p) for p in params}


# -- the step --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion,grad_mode", [("shared", "protect"), ("afa", "joint"), ("afa", "protect")])
def test_the_shared_parameters_are_those_more_than_one_task_reaches(fusion, grad_mode):
    model = tiny(fusion, grad_mode=grad_mode)
    step, _ = step_for(model, GradientMethod(model.tasks, "mgda"))
    assert isinstance(step, GradientStep)
    step(batch(model))
    own = [ids(model.heads[t].parameters()) for t in model.tasks]
    if fusion == "shared":
        shared = ids(model.trunks["shared"].parameters())
    elif grad_mode == "joint":  # AFA after every block of layer4: both branches and the AFA layers reach both tasks
        shared = ids(model.trunks.parameters()) | ids(model.fusions.parameters())
    else:  # protect shields task 1's branch from task 2's loss: it is task 1's own
        shared = ids(model.trunks["age"].parameters()) | ids(model.fusions.parameters())
        own[0] |= ids(model.trunks["gender"].parameters())
    assert ids(step.shared_params) == shared
    assert [ids(p) for p in step.own] == own


def test_a_branch_after_the_last_fusion_point_belongs_to_its_task():
    model = tiny("cross_stitch", fusion_at=("layer2",))
    step, _ = step_for(model, GradientMethod(model.tasks, "pcgrad"))
    step(batch(model))
    for k, t in enumerate(model.tasks):
        after = ids(model.trunks[t].layer3.parameters()) | ids(model.trunks[t].layer4.parameters())
        assert after <= ids(step.own[k]) and not after & ids(step.shared_params)
    assert ids(model.trunks[model.tasks[0]].layer1.parameters()) <= ids(step.shared_params)


def _sum_method(model):
    """A method that adds the task gradients: its step must be plain training with equal weights."""

    class Sum:
        needs_gradients, returns_weights = True, True

        def __call__(self, G):
            return G.sum(0), torch.ones(G.shape[0], dtype=G.dtype)

    method = GradientMethod(model.tasks, "mgda")
    method.aggregator = Sum()
    return method


@pytest.mark.parametrize("grad_mode", ["protect", "joint"])
def test_one_backward_per_task_then_the_sum_is_plain_training(grad_mode):
    # float64: some gradients (AFA's self / other maps) are small differences of the tasks' ones
    a, b = tiny("afa", grad_mode=grad_mode).double(), tiny("afa", grad_mode=grad_mode).double()
    data = {k: v.double() if v.is_floating_point() else v for k, v in batch(a).items()}
    plain, _ = step_for(a, EqualWeighting(a.tasks))
    method, _ = step_for(b, _sum_method(b))
    la, _ = plain(data)
    lb, wb = method(data)
    torch.testing.assert_close(la, lb)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    assert wb.tolist() == [1.0, 1.0]


def test_fp16_scaling_is_undone_before_the_method_and_inf_skips_the_step():
    a, b = tiny("shared"), tiny("shared")
    data = batch(a)
    plain, _ = step_for(a, GradientMethod(a.tasks, "nash"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled, _ = step_for(b, GradientMethod(b.tasks, "nash"), scaler=scaler)
    plain(data)
    scaled(data)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # Nash-MTL's weights are not scale-free
    before = [p.detach().clone() for p in b.parameters()]
    losses = scaled.family.losses

    def overflowing(out, batch):
        out = losses(out, batch)
        return {**out, "age": out["age"] * float("inf")}

    scaled.family.losses = overflowing
    scaled(data)
    assert all(torch.equal(p, q) for p, q in zip(before, b.parameters()))  # skipped, as plain fp16 training
    assert scaler.get_scale() == 2.0**11


def test_famo_step_weights_the_losses_and_keeps_batchnorm_statistics():
    model = tiny("shared")
    step, _ = step_for(model, GradientMethod(model.tasks, "famo"))
    assert isinstance(step, FamoStep)
    data = batch(model)
    step(data)  # the first step: BatchNorm statistics move once, as in plain training
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    plain_model = tiny("shared")
    plain, _ = step_for(plain_model, EqualWeighting(plain_model.tasks))
    plain(data)
    for k, v in plain_model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(stats[k], v)  # the second forward left them alone
    famo = step.weighting.aggregator
    assert famo.step == 1 and famo.logits.abs().sum() > 0  # one update of the logits


def test_weights_are_logged_except_for_pcgrad():
    model = tiny("shared")
    step, _ = step_for(model, GradientMethod(model.tasks, "pcgrad"))
    assert not step.reports_weights
    assert step_for(model, GradientMethod(model.tasks, "imtl"))[0].reports_weights
    assert type(step_for(model, EqualWeighting(model.tasks))[0]) is TrainStep


# -- training runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(adience, tmp_path_factory):
    run = tmp_path_factory.mktemp("stage1")
    assert train_image.main(image(adience, run, "--fusion", "none")) == 0
    return run / "last_best.pth"


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_trains_afa_with_two_tasks_and_hard_sharing_with_three(method, adience, mtan, stage1, tmp_path):
    afa = tmp_path / "afa"
    assert train_image.main(image(adience, afa, "--fusion", "afa", "--init", str(stage1), "--weighting", method)) == 0
    ck = load_checkpoint(afa / "last.pth")
    assert ck["args"]["weighting"] == method and ck["weighting"]["_extra_state"]["method"] == method
    rec = read_log(afa / "log.jsonl")[-1]
    if method != "famo":  # FAMO takes no per-task gradients
        assert -1.0 <= rec["grad/cos/gender/age"] <= 1.0 and rec["grad/norm/gender"] > 0 and rec["grad/norm/age"] > 0
    assert ("train/weight/age" in rec) == (method != "pcgrad")

    shared = tmp_path / "shared"
    three = ["--tasks", "seg", "depth", "normal", "--fusion", "shared", "--weighting", method, "--amp", "bf16"]
    assert train_pixel.main(pixel(mtan, shared, *three)) == 0
    rec = read_log(shared / "log.jsonl")[-1]
    assert all(rec[f"train/loss/{t}"] == rec[f"train/loss/{t}"] for t in ("seg", "depth", "normal"))  # not NaN
    if method != "famo":
        assert {"grad/cos/seg/depth", "grad/cos/seg/normal", "grad/cos/depth/normal", "grad/norm/normal"} <= set(rec)


@pytest.mark.parametrize("method", ["nash", "famo", "pcgrad"])
def test_resume_after_a_signal_is_bit_exact_with_a_stateful_method(method, adience, tmp_path, monkeypatch):
    flags = ["--fusion", "afa", "--weighting", method, "--epochs", "2", "--nash-update-every", "2", "--seed", "3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train_image.main(image(adience, full, *flags)) == 0
    calls = {"n": 0}

    def stop_in_epoch_2(stop, dist, at_log):
        calls["n"] += 1
        return calls["n"] == 3  # after the first batch of epoch 2: the method's state matters

    monkeypatch.setattr(trainer, "should_stop", stop_in_epoch_2)
    assert train_image.main(image(adience, cut, *flags)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert train_image.main(image(adience, cut, *flags, "--resume", str(cut / "last.pth"))) == 0
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(cut / "last.pth")
    assert a["train_state"] == b["train_state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resume is not exact"
    sa, sb = a["weighting"]["_extra_state"]["aggregator"], b["weighting"]["_extra_state"]["aggregator"]
    assert sa.keys() == sb.keys() and sa  # a state to restore: Nash's step and weights, FAMO's logits, PCGrad's rng
    for k in sa:
        assert torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k], k


def test_what_makes_no_sense_is_refused_in_one_line(adience, stage1, tmp_path, capsys, monkeypatch):
    cases = [
        (["--fusion", "none", "--weighting", "pcgrad"], "--fusion none shares none"),
        (["--fusion", "afa", "--init", str(stage1), "--grad-mode", "adaptive", "--weighting", "mgda"], "adaptive"),
        (["--fusion", "shared", "--freeze-bn", "--precise-bn", "1"], "--freeze-bn"),
    ]
    for i, (flags, words) in enumerate(cases):
        assert train_image.main(image(adience, tmp_path / str(i), *flags)) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err

    import engine.gradients as gradients

    def no_cvxpy(method):
        raise gradients.MissingSolver(f"{method} needs the optional solver cvxpy with ECOS; install it with: X")

    monkeypatch.setattr(gradients, "_import_cvxpy", no_cvxpy)
    assert train_image.main(image(adience, tmp_path / "nash", "--fusion", "shared", "--weighting", "nash")) == 2
    err = capsys.readouterr().err.strip()
    assert "--weighting nash" in err and "cvxpy" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(adience, tmp_path):
    def run(nproc, batch_size, out):
        flags = ["--data-root", str(adience), "--crop-size", "32", "--batch-size", str(batch_size), "--epochs", "1"]
        flags += ["--limit-batches", "2", "--workers", "0", "--device", "cpu", "--pretrained", "none", *TINY]
        flags += ["--fusion", "shared", "--weighting", "pcgrad", "--freeze-bn", "--out", str(out / "last.pth")]
        flags += ["--logdir", str(out)]
        torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [*torchrun, "train_image.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return load_checkpoint(out / "last.pth")

    two, one = run(2, 2, tmp_path / "two"), run(1, 4, tmp_path / "one")
    assert two["train_state"]["iteration"] == one["train_state"]["iteration"] == 2
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    log_two, log_one = read_log(tmp_path / "two" / "log.jsonl"), read_log(tmp_path / "one" / "log.jsonl")
    assert json.dumps(sorted(log_two[-1])) == json.dumps(sorted(log_one[-1]))
    assert log_two[-1]["grad/cos/gender/age"] == pytest.approx(log_one[-1]["grad/cos/gender/age"], rel=1e-4)
