"""train_series.py and eval.py on a tiny synthetic Phototriage: a smoke run with TensorBoard and
log.jsonl, evaluation whose metrics are recomputed from predictions.csv, exact resume, and the
series metrics against hand-computed values."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_trunk
import torch
from test_training import REPO, TINY, event_scalars
from torch.utils.data import DataLoader, Subset

import eval as eval_script
import train_series
from data import PairEvalTransform, Phototriage
from data.synthetic_series import write_phototriage
from engine import train as trainer
from engine.checkpoint import load_checkpoint
from engine.metrics import SeriesMeter, series_metrics
from engine.runs import parse_with_explicit
from families import SeriesFamily
from models import model_from_config

KEYS = ["pair/acc", "pair/acc_agree", "pair/nll", "series/top1"]


@pytest.fixture(scope="module")
def phototriage(tmp_path_factory):
    return write_phototriage(tmp_path_factory.mktemp("pt"), series=(6, 3, 4), size=32, seed=0)


def args(root, tmp, *extra):
    return train_series.get_args_parser().parse_args(
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
            *TINY,
            "--out",
            str(tmp / "series_last.pth"),
            "--logdir",
            str(tmp / "run"),
            *extra,
        ]
    )


def recompute(rows):
    """The metrics from (series, i, j, p, prob_i) rows, written out independently of engine.metrics."""
    hit = [(q > 0.5) == (p > 0.5) for _, _, _, p, q in rows]
    agree = [h for h, r in zip(hit, rows) if r[3] >= 0.7 or r[3] <= 0.3]
    c = [min(max(q, 1e-12), 1 - 1e-12) for *_, q in rows]  # the documented clamp
    nll = [-(r[3] * math.log(q) + (1 - r[3]) * math.log(1 - q)) for r, q in zip(rows, c)]
    top = []
    for s in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == s]
        photos = sorted({x for r in mine for x in r[1:3]})

        def score(x, col, mine=mine):
            wins = sum((r[col] > 0.5) == (r[1] == x) for r in mine if x in r[1:3])
            soft = sum(r[col] if r[1] == x else 1 - r[col] for r in mine if x in r[1:3])
            return wins, soft, -x

        top.append(max(photos, key=lambda x: score(x, 4)) == max(photos, key=lambda x: score(x, 3)))
    return {
        "pair/acc": sum(hit) / len(hit),
        "pair/acc_agree": sum(agree) / len(agree),
        "pair/nll": sum(nll) / len(nll),
        "series/top1": sum(top) / len(top),
    }


def test_train_eval_and_metrics_recomputed_from_predictions_csv(phototriage, tmp_path):
    run = tmp_path / "pau"
    # precise BN: after two steps from scratch the running statistics are far from the batch ones,
    # and the PAU descriptors (cubic in the features) would overflow in eval mode
    assert train_series.main(args(phototriage, run, "--log-every", "1", "--precise-bn", "2")) == 0
    ck = load_checkpoint(run / "series_best.pth")
    assert ck["kind"] == "series" and ck["model_config"] == {
        "kind": "series",
        "fusion": "pau",
        "input_size": 32,
        "shared_units": False,
        "symmetric": False,
        **tiny_trunk.MODEL,
    }
    assert {"loss/pair", "opt/lr_head", "val/pair/acc", "val/series/top1"} <= event_scalars(run / "run")
    record = json.loads((run / "run" / "log.jsonl").read_text().splitlines()[0])
    assert {f"val/{k}" for k in KEYS} <= set(record) and record["val/score"] == record["val/pair/acc"]

    out_json, preds = tmp_path / "m.json", tmp_path / "preds"
    assert (
        eval_script.main(
            eval_script.get_args_parser().parse_args(
                [
                    "--checkpoint",
                    str(run / "series_best.pth"),
                    "--data-root",
                    str(phototriage),
                    "--json",
                    str(out_json),
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
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == KEYS and all(math.isfinite(v) for v in metrics.values())
    with open(preds / "predictions.csv") as f:
        reader = csv.reader(f)
        assert next(reader) == ["series", "i", "j", "p", "prob_i"]
        rows = [(int(s), int(i), int(j), float(p), float(q)) for s, i, j, p, q in reader]
    test = Phototriage(phototriage, "test")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(p.series, p.i, p.j, p.p) for p in test.pairs]
    assert metrics == pytest.approx(recompute(rows), rel=1e-9)


def test_resume_is_bit_exact_also_mid_epoch(phototriage, tmp_path, monkeypatch):
    extra = ["--fusion", "siamese", "--epochs", "2", "--seed", "3", "--swap-p", "0.5", "--flip-p", "0.5"]
    full = tmp_path / "full"
    assert train_series.main(args(phototriage, full, *extra)) == 0
    cut = tmp_path / "cut"
    calls = {"n": 0}

    def stop_after_third_batch(stop, dist, at_log):
        calls["n"] += 1
        return calls["n"] == 3  # epoch 2, after its first batch

    monkeypatch.setattr(trainer, "should_stop", stop_after_third_batch)
    assert train_series.main(args(phototriage, cut, *extra)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert train_series.main(args(phototriage, cut, *extra, "--resume", str(cut / "series_last.pth"))) == 0
    a, b = load_checkpoint(full / "series_last.pth"), load_checkpoint(cut / "series_last.pth")
    # (json: a NaN metric of the tiny validation set compares equal to itself)
    assert json.dumps(a["train_state"]) == json.dumps(b["train_state"]) and a["train_state"]["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # --resume alone takes the run's own settings (its crop, seed, swaps ...); --epochs extends it
    argv = ["--resume", str(cut / "series_last.pth"), "--epochs", "3"]
    assert train_series.main(*parse_with_explicit(train_series.get_args_parser(), argv)) == 0
    assert load_checkpoint(cut / "series_last.pth")["train_state"]["epoch"] == 3


def test_series_metrics_against_hand_computed_values():
    rows = [  # series, i, j, p, prob_i
        (7, 1, 2, 0.9, 0.8),  # right, agreed
        (7, 1, 3, 0.6, 0.3),  # wrong, not agreed
        (7, 2, 3, 0.2, 0.4),  # right (3 wins), agreed
        (9, 1, 2, 0.25, 0.7),  # wrong, agreed
    ]
    m = series_metrics(rows)
    assert m["pair/acc"] == pytest.approx(2 / 4) and m["pair/acc_agree"] == pytest.approx(2 / 3)
    nll = (
        -(0.9 * math.log(0.8) + 0.1 * math.log(0.2))
        - (0.6 * math.log(0.3) + 0.4 * math.log(0.7))
        - (0.2 * math.log(0.4) + 0.8 * math.log(0.6))
        - (0.25 * math.log(0.7) + 0.75 * math.log(0.3))
    )
    assert m["pair/nll"] == pytest.approx(nll / 4)
    # series 7: raters' wins 1: 2, 2: 0, 3: 1 -> photo 1; predicted wins 1: 1 (beats 2), 2: 0, 3: 2 -> photo 3
    # series 9: raters prefer 2, the net 1 -> both wrong
    assert m["series/top1"] == 0.0
    # a predicted tie in wins (1 beats 2, 2 beats 3, 3 beats 1) goes to the larger summed probability
    cyc = [(1, 1, 2, 0.9, 0.9), (1, 2, 3, 0.9, 0.6), (1, 1, 3, 0.9, 0.4)]
    assert series_metrics(cyc)["series/top1"] == 1.0  # photo 1: 0.9 + 0.4 = 1.3 > 0.7 (2), 1.0 (3)
    meter = SeriesMeter()
    meter.update(*(torch.tensor(c, dtype=torch.float64 if k > 2 else torch.int64) for k, c in enumerate(zip(*rows))))
    assert meter.compute() == m and SeriesFamily.score(m) == m["pair/acc"]
    assert all(math.isnan(v) for v in series_metrics([]).values())


@pytest.mark.slow
def test_torchrun_two_processes_rank_the_series_whole(phototriage, tmp_path):
    """Validation pairs are split across ranks; the gathered metrics equal one process's."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "train_series.py",
        "--data-root",
        str(phototriage),
        "--crop-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--limit-batches",
        "3",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--pretrained",
        "none",
        "--fusion",
        "siamese",
        *TINY,
        "--out",
        str(tmp_path / "ddp_last.pth"),
        "--logdir",
        str(tmp_path / "run"),
        "--precise-bn",
        "2",
    ]  # the same BN statistics on both ranks
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    ck = load_checkpoint(tmp_path / "ddp_last.pth")
    model = model_from_config(ck["model_config"])
    model.load_state_dict(ck["model"])
    model.eval()
    val = Phototriage(phototriage, "val", transform=PairEvalTransform(32))
    meter = SeriesMeter()
    # each rank saw at most 3 batches of 2 of its half (EpochSampler without padding: every other pair)
    seen = [k for rank in (0, 1) for k in list(range(len(val)))[rank::2][:6]]
    loader = DataLoader(Subset(val, seen), batch_size=2)
    family = SeriesFamily.from_checkpoint(ck)
    metrics = family.evaluate(lambda a, b: model(a, b), loader, torch.device("cpu"), None, meter=meter)
    assert len(meter.rows) == len(seen) and len({r[0] for r in meter.rows}) > 1
    assert {k: record[f"val/{k}"] for k in KEYS} == pytest.approx(metrics, rel=1e-5)
