"""reproduce.py: the protocol's plan and commands (dry runs), skipping and resuming, failure, the
report's aggregation against values recomputed here, and one toy-scale protocol run on a tiny
official-format Adience set (real training and evaluation subprocesses)."""

import csv
import hashlib
import io
import json
import math
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_trunk

import reproduce
from data.synthetic import write_adience

REPO = Path(__file__).resolve().parents[1]
IMAGE_KEYS = ["gender/acc", "age/acc", "age/one_off"]
TOY = [
    "--crop-size",
    "32",
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
    "--batch-size",
    "4",
    *tiny_trunk.FLAGS,
]


def dry_run(capsys, *argv):
    argv = list(argv)
    at = argv.index("--") if "--" in argv else len(argv)
    code = reproduce.main(["run", *argv[:at], "--dry-run", *argv[at:]])
    out, err = capsys.readouterr()
    return code, [line.split(" && ") for line in out.splitlines()], err


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_dry_run_lists_runs_in_dependency_order(tmp_path, capsys):
    out = tmp_path / "out"
    code, lines, err = dry_run(
        capsys,
        "adience",
        "--data-root",
        str(tmp_path),
        "--out",
        str(out),
        "--methods",
        "afa,shared",
        "--folds",
        "0-1",
        "--seeds",
        "3",
        "--",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert code == 0
    assert "plan: 6 runs of adience" in err and "0 finished, 0 interrupted (resumed), 6 to train" in err
    runs = []
    for train, evaluate in lines:
        train, evaluate = shlex.split(train), shlex.split(evaluate)
        run = Path(flag(train, "--logdir"))
        runs.append((flag(train, "--fusion"), flag(train, "--test-fold"), run.relative_to(out).as_posix()))
        assert train[:2] == [sys.executable, str(REPO / "train_image.py")]
        assert flag(train, "--seed") == "3" and flag(train, "--data-root") == str(tmp_path)
        assert flag(train, "--out") == str(run / "checkpoint_last.pth") and "--resume" not in train
        assert train[-4:] == ["--epochs", "1", "--device", "cpu"]
        assert evaluate[1] == str(REPO / "eval.py") and flag(evaluate, "--json") == str(run / "eval.json")
        assert flag(evaluate, "--checkpoint") == str(run / "checkpoint_best.pth")
        assert flag(evaluate, "--device") == "cpu" and "--epochs" not in evaluate
        # Stage 2 starts from the stage-1 run of the same fold and seed; 'shared' starts from ImageNet.
        init = flag(train, "--init")
        if flag(train, "--fusion") == "afa":
            assert init == str(out / "adience" / "none" / run.name / "checkpoint_best.pth")
        else:
            assert init is None
    # The single-task runs come along for the stage-2 method, and every stage-1 run precedes stage 2.
    assert runs == [
        ("none", "0", "adience/none/fold0_seed3"),
        ("shared", "0", "adience/shared/fold0_seed3"),
        ("none", "1", "adience/none/fold1_seed3"),
        ("shared", "1", "adience/shared/fold1_seed3"),
        ("afa", "0", "adience/afa/fold0_seed3"),
        ("afa", "1", "adience/afa/fold1_seed3"),
    ]
    assert not out.exists()  # a dry run creates nothing


def test_dry_run_nyuv2_layout_torchrun_and_errors(tmp_path, capsys):
    out = tmp_path / "out"
    code, lines, _ = dry_run(
        capsys,
        "nyuv2",
        "--data-root",
        str(tmp_path),
        "--out",
        str(out),
        "--methods",
        "none,afa",
        "--seeds",
        "0,1",
        "--torchrun",
        "4",
    )
    assert code == 0 and len(lines) == 4
    train, evaluate = (shlex.split(c) for c in lines[3])
    assert train[:4] == ["torchrun", "--standalone", "--nproc_per_node=4", str(REPO / "train_pixel.py")]
    assert flag(train, "--logdir") == str(out / "nyuv2" / "afa" / "seed1") and "--test-fold" not in train
    assert evaluate[0] == sys.executable  # evaluation is one process
    assert flag(evaluate, "--per-class") == str(out / "nyuv2" / "afa" / "seed1" / "per_class_iou.json")

    assert reproduce.main(["run", "nyuv2", "--data-root", str(tmp_path), "--out", str(out), "--folds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --folds: nyuv2 has no folds"
    assert reproduce.main(["run", "adience", "--data-root", str(tmp_path), "--out", str(out), "--methods", "x"]) == 2
    assert "--methods: x not in adience's" in capsys.readouterr().err
    if not (REPO / "train_series.py").exists():
        assert reproduce.main(["run", "series", "--data-root", str(tmp_path), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (
            "error: family 'series' needs train_series.py, which this checkout does not have"
        )


def test_finished_runs_are_skipped_and_interrupted_runs_resumed(tmp_path, capsys):
    out = tmp_path / "out"
    single, fused = out / "adience" / "none" / "fold2_seed0", out / "adience" / "afa" / "fold2_seed0"
    single.mkdir(parents=True)
    (single / "checkpoint_last.pth").write_bytes(b"state")  # interrupted: a checkpoint, no eval.json
    fused.mkdir(parents=True)
    (fused / "eval.json").write_text("{}")  # finished
    code, lines, err = dry_run(
        capsys, "adience", "--data-root", str(tmp_path), "--out", str(out), "--methods", "none,afa", "--folds", "2"
    )
    assert code == 0 and "1 finished, 1 interrupted (resumed), 0 to train" in err
    assert "[2/2] adience/afa/fold2_seed0: finished, skipped" in err
    assert len(lines) == 1
    train = shlex.split(lines[0][0])
    assert flag(train, "--resume") == str(single / "checkpoint_last.pth")
    assert flag(train, "--out") == str(single / "checkpoint_last.pth")


def test_an_attempt_without_a_checkpoint_is_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    failed = out / "adience" / "none" / "fold2_seed0"
    failed.mkdir(parents=True)
    (failed / "args.json").write_text("{}")  # stopped before its first checkpoint: logs only
    code, lines, err = dry_run(
        capsys, "adience", "--data-root", str(tmp_path), "--out", str(out), "--methods", "none", "--folds", "2"
    )
    assert code == 0 and "1 to train" in err
    train = shlex.split(lines[0][0])
    assert "--overwrite" in train and "--resume" not in train


def test_a_failing_run_stops_the_protocol_with_its_exit_code(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "execute", lambda cmd: calls.append(cmd) or 3)
    code = reproduce.main(
        [
            "run",
            "adience",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--methods",
            "none,afa",
            "--folds",
            "0,1",
        ]
    )
    assert code == 3 and len(calls) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: run adience/none/fold0_seed0: training (train_image.py) failed with exit code 3; finished runs are kept"
    ]


def write_run(root: Path, family: str, method: str, name: str, metrics: dict, per_class: dict | None = None):
    run = root / family / method / name
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps(metrics))
    if per_class is not None:
        (run / "per_class_iou.json").write_text(json.dumps(per_class))


def test_weightings_add_an_axis_of_runs_and_report_rows(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["adience", "--data-root", str(tmp_path), "--out", str(out), "--methods", "afa,shared", "--folds", "0"]
    code, lines, err = dry_run(capsys, *argv, "--weightings", "dwa,pcgrad")
    assert code == 0 and "plan: 5 runs of adience (none, shared+dwa, shared+pcgrad, afa+dwa, afa+pcgrad;" in err
    runs = {Path(flag(shlex.split(t), "--logdir")).parent.name: shlex.split(t) for t, _ in lines}
    assert flag(runs["none"], "--weighting") is None  # the single-task pair keeps the recipe's
    assert flag(runs["afa+pcgrad"], "--weighting") == "pcgrad" and flag(runs["shared+dwa"], "--weighting") == "dwa"
    assert flag(runs["afa+pcgrad"], "--init") == str(out / "adience" / "none" / "fold0_seed0" / "checkpoint_best.pth")
    code, _, err = dry_run(capsys, *argv, "--weightings", "dwa,sgd")
    assert code == 2 and "--weightings: sgd not among" in err

    base = {"gender/acc": 0.80, "age/acc": 0.40, "age/one_off": 0.70}
    for method, gain in (("none", 1.0), ("afa+pcgrad", 1.1), ("afa+dwa", 1.05), ("shared+dwa", 0.9)):
        write_run(tmp_path / "res", "adience", method, "fold0_seed0", {k: v * gain for k, v in base.items()})
    json_path = tmp_path / "report.json"
    assert reproduce.main(["report", str(tmp_path / "res"), "--json", str(json_path)]) == 0
    rows = {(r["method"], r["metric"]): r for r in json.loads(json_path.read_text())["rows"]}
    order = list(dict.fromkeys(r["method"] for r in json.loads(json_path.read_text())["rows"]))
    assert order == ["none", "shared+dwa", "afa+dwa", "afa+pcgrad"]  # the protocol's order, then weighting
    assert rows["afa+pcgrad", "delta_m"]["mean"] == pytest.approx(10.0)
    assert rows["shared+dwa", "delta_m"]["mean"] == pytest.approx(-10.0)


def test_report_means_stds_and_deltas_equal_recomputed_values(tmp_path, capsys):
    made_up = {  # (method, fold) -> eval.json; 2 folds x 2 methods, plus one 'shared' run (n = 1)
        ("none", 0): {"gender/acc": 0.80, "age/acc": 0.40, "age/one_off": 0.70},
        ("none", 1): {"gender/acc": 0.70, "age/acc": 0.50, "age/one_off": 0.80},
        ("afa", 0): {"gender/acc": 0.84, "age/acc": 0.44, "age/one_off": 0.77},
        ("afa", 1): {"gender/acc": 0.63, "age/acc": 0.60, "age/one_off": 0.80},
        ("shared", 1): {"gender/acc": 0.84, "age/acc": 0.45, "age/one_off": None},
    }
    for (method, fold), m in made_up.items():
        write_run(tmp_path, "adience", method, f"fold{fold}_seed0", m)
    json_path, png = tmp_path / "report.json", tmp_path / "delta.png"
    assert reproduce.main(["report", str(tmp_path), "--json", str(json_path), "--plot", str(png)]) == 0
    md = capsys.readouterr().out
    rows = {(r["method"], r["metric"]): r for r in json.loads(json_path.read_text())["rows"]}
    assert all(set(r) == {"method", "metric", "mean", "std", "n"} for r in rows.values())
    for method in ("none", "afa"):
        for k in IMAGE_KEYS:
            v = [made_up[method, f][k] for f in (0, 1)]
            assert rows[method, k]["mean"] == pytest.approx(sum(v) / 2)
            assert rows[method, k]["std"] == pytest.approx(statistics.stdev(v))  # n - 1
            assert rows[method, k]["n"] == 2
    # Delta_m per fold (all three metrics: higher is better), then mean and sample std over folds.
    deltas = [
        100 * sum((made_up["afa", f][k] - made_up["none", f][k]) / made_up["none", f][k] for k in IMAGE_KEYS) / 3
        for f in (0, 1)
    ]
    assert rows["afa", "delta_m"]["mean"] == pytest.approx(statistics.mean(deltas))
    assert rows["afa", "delta_m"]["std"] == pytest.approx(statistics.stdev(deltas))
    assert ("none", "delta_m") not in rows
    # One run: std undefined (null), n = 1; a missing metric leaves n = 0; delta over the metrics both report.
    assert rows["shared", "gender/acc"] == {
        "method": "shared",
        "metric": "gender/acc",
        "mean": 0.84,
        "std": None,
        "n": 1,
    }
    assert rows["shared", "age/one_off"]["n"] == 0
    shared_delta = 100 * ((0.84 - 0.70) / 0.70 + (0.45 - 0.50) / 0.50) / 2
    assert rows["shared", "delta_m"]["mean"] == pytest.approx(shared_delta) and rows["shared", "delta_m"]["n"] == 1
    assert png.stat().st_size > 0
    assert "| method | n | gender/acc | age/acc | age/one_off | delta_m |" in md
    assert f"| afa | 2 | {sum([0.84, 0.63]) / 2:.4f} ± {statistics.stdev([0.84, 0.63]):.4f} |" in md

    assert reproduce.main(["report", str(tmp_path / "adience"), "--format", "csv"]) == 0
    table = {r["method"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert float(table["afa"]["delta_m"]) == pytest.approx(statistics.mean(deltas))
    assert float(table["none"]["age/acc std"]) == pytest.approx(statistics.stdev([0.40, 0.50]))
    assert table["shared"]["n"] == "1" and table["shared"]["gender/acc std"] == ""
    assert reproduce.main(["report", str(tmp_path), "--format", "tex"]) == 0
    assert r"afa & 2 & 0.7350 $\pm$ 0.1485" in capsys.readouterr().out


def test_report_nyuv2_directions_and_per_class_iou(tmp_path, capsys):
    # Lower depth RMSE is better: the sign of its delta flips (one definition: engine.metrics.DIRECTION).
    write_run(tmp_path, "nyuv2", "none", "seed0", {"seg/miou": 0.40, "depth/rmse": 0.60}, {"wall": 0.6, "bed": 0.2})
    write_run(tmp_path, "nyuv2", "none", "seed1", {"seg/miou": 0.42, "depth/rmse": 0.64}, {"wall": 0.7, "bed": None})
    write_run(tmp_path, "nyuv2", "afa", "seed0", {"seg/miou": 0.44, "depth/rmse": 0.57}, {"wall": 0.5, "bed": 0.3})
    json_path = tmp_path / "r.json"
    assert reproduce.main(["report", str(tmp_path), "--json", str(json_path)]) == 0
    out, err = capsys.readouterr()
    rows = {(r["method"], r["metric"]): r for r in json.loads(json_path.read_text())["rows"]}
    expected = 100 * ((0.44 - 0.40) / 0.40 - (0.57 - 0.60) / 0.60) / 2
    assert rows["afa", "delta_m"]["mean"] == pytest.approx(expected) and rows["afa", "delta_m"]["n"] == 1
    assert "per-class IoU" in out
    assert "| method | none | afa |" in out
    assert f"| wall | 0.6500 ± {statistics.stdev([0.6, 0.7]):.4f} | 0.5000 ± - |" in out
    assert "| bed | 0.2000 ± - | 0.3000 ± - |" in out  # a class absent from a run counts n = 1

    write_run(tmp_path, "adience", "none", "fold0_seed0", {"gender/acc": 0.5})
    assert reproduce.main(["report", str(tmp_path)]) == 2
    assert "holds several families (adience, nyuv2)" in capsys.readouterr().err


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_toy_protocol_runs_once_and_reports(tmp_path):
    """The acceptance check at toy scale: one folder per run with args.json and eval.json; the same
    command again trains nothing and touches nothing; the report equals the eval.json files."""
    data = write_adience(tmp_path / "adience", per_fold=14, size=48)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "reproduce.py"),
        "run",
        "adience",
        "--data-root",
        str(data),
        "--out",
        str(out),
        "--methods",
        "none,afa",
        "--folds",
        "0",
        "--seeds",
        "0",
        "--",
        *TOY,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "plan: 2 runs of adience" in first.stdout and "2 to train" in first.stdout
    evals = {}
    for method in ("none", "afa"):
        run = out / "adience" / method / "fold0_seed0"
        assert {"args.json", "eval.json", "checkpoint_last.pth", "checkpoint_best.pth", "log.jsonl"} <= {
            p.name for p in run.iterdir()
        }
        settings = json.loads((run / "args.json").read_text())
        assert settings["fusion"] == method and settings["test_fold"] == 0 and settings["seed"] == 0
        evals[method] = json.loads((run / "eval.json").read_text())
        assert list(evals[method]) == IMAGE_KEYS
        assert f"adience/{method}/fold0_seed0: done in" in first.stdout
    assert "init from" in first.stdout  # stage 2 started from stage 1

    before = tree_state(out)
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "2 finished, 0 interrupted (resumed), 0 to train" in second.stdout
    assert second.stdout.count("finished, skipped") == 2 and "training" not in second.stdout.split("\n", 1)[1]
    assert tree_state(out) == before

    json_path = tmp_path / "report.json"
    assert reproduce.main(["report", str(out), "--json", str(json_path)]) == 0
    rows = {(r["method"], r["metric"]): r for r in json.loads(json_path.read_text())["rows"]}
    for method in ("none", "afa"):
        for k in IMAGE_KEYS:
            assert rows[method, k]["mean"] == pytest.approx(evals[method][k]) and rows[method, k]["n"] == 1
    ratios = [(evals["afa"][k] - evals["none"][k]) / evals["none"][k] for k in IMAGE_KEYS if evals["none"][k]]
    delta = rows["afa", "delta_m"]["mean"]
    assert (delta is None and not ratios) or delta == pytest.approx(100 * sum(ratios) / len(ratios))
    assert math.isfinite(delta) if ratios else True


def test_per_class_iou_comes_from_the_confusion_matrix_behind_miou():
    """eval.py --per-class writes SegMeter.class_iou(): per class tp / (gt + pred - tp), NaN (null in
    the file) where the class is absent from truth and prediction; seg/miou is the mean of the rest."""
    import torch

    import eval as eval_script
    from engine.metrics import SegMeter

    meter = SegMeter(4)
    truth = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 3, 0]])
    meter.update(pred, truth)
    iou = meter.class_iou()
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(iou[3])
    assert meter.compute()["seg/miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    args = eval_script.get_args_parser().parse_args(["--checkpoint", "c", "--data-root", "d", "--per-class", "f"])
    assert args.per_class == "f"


@pytest.mark.slow
def test_a_signal_reaches_the_running_command_once(tmp_path):
    """Ctrl-C / SIGTERM to reproduce.py is forwarded once to the training process, which then saves
    and exits on its own (here: a stand-in that counts the signals it gets)."""
    import os
    import signal
    import threading
    import time

    ready, count = tmp_path / "ready", tmp_path / "count"
    child = (
        "import signal, sys, time, pathlib\n"
        "n = []\n"
        "def h(s, f):\n"
        "    n.append(s)\n"
        f"signal.signal(signal.SIGINT, h)\npathlib.Path({str(ready)!r}).touch()\n"
        "t = time.time()\n"
        "while not n and time.time() - t < 20:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(0.5)\n"
        f"pathlib.Path({str(count)!r}).write_text(str(len(n)))\n"
        "sys.exit(130)\n"
    )

    def interrupt():
        for _ in range(400):
            if ready.exists():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert reproduce.execute([sys.executable, "-c", child]) == 130
    assert count.read_text() == "1"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
