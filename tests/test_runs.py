"""Run safety (engine/runs.py): a fresh run never writes over another run, args.json, and --resume
keeping the run's settings (refusing changes of meaning, applying the safe ones, extending by --epochs).

Tiny official-format Adience data and crops of 32 px, as in test_training.py.
"""

import hashlib
import json
from pathlib import Path

import tiny_trunk
from test_training import event_scalars

import train_image
from engine.checkpoint import load_checkpoint
from engine.logger import read_log
from engine.runs import SAFE_ON_RESUME, parse_with_explicit


def argv(adience, tmp: Path, *extra: str) -> list[str]:
    return [
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
        *tiny_trunk.FLAGS,
        "--out",
        str(tmp / "w" / "image_last.pth"),
        "--logdir",
        str(tmp / "run"),
        *extra,
    ]


def run(args: list[str]) -> int:
    """As the script's __main__ does: the flags typed count as given, whatever their value."""
    return train_image.main(*parse_with_explicit(train_image.get_args_parser(), args))


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_parse_with_explicit_knows_what_was_typed():
    parser = train_image.get_args_parser()
    args, given = parse_with_explicit(parser, ["--data-root", "x", "--epochs", "50", "--channels-last"])
    assert args.epochs == 50 == parser.get_default("epochs")  # the default's value, typed: still given
    assert given == {"data_root", "epochs", "channels_last"}
    assert set(SAFE_ON_RESUME) <= set(vars(args))  # the safe list names real settings


def test_fresh_runs_never_write_over_a_run_and_overwrite_replaces_it(adience, tmp_path, capsys, monkeypatch):
    import types

    from tensorboardX import event_file_writer

    # Every event file named as if in the same second (tiny runs often are): the replacing run's file
    # then has the old one's name, and must survive the removal of the old run's files.
    monkeypatch.setattr(event_file_writer, "time", types.SimpleNamespace(time=lambda: 1800000000.5))
    assert run(argv(adience, tmp_path, "--fusion", "afa", "--seed", "3")) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    parser = train_image.get_args_parser()
    assert set(saved) == set(vars(parser.parse_args(["--data-root", "x"])))  # every setting, by its dest
    assert saved["fusion"] == "afa" and saved["test_fold"] == 0 and saved["seed"] == 3
    assert saved["out"] == str(tmp_path / "w" / "image_last.pth") and saved["data_root"] == str(adience)
    first = digests(tmp_path)
    assert any(t.startswith("fusion/") for t in event_scalars(tmp_path / "run"))  # afa's records
    assert {"w/image_last.pth", "w/image_best.pth", "run/log.jsonl", "run/args.json"} <= set(first)

    # The same command again: one line naming the ways out, and not a byte changed.
    assert run(argv(adience, tmp_path, "--fusion", "afa", "--seed", "3")) == 2
    err = one_error_line(capsys)
    assert "image_last.pth already holds a run" in err
    assert "--resume" in err and "--out/--logdir" in err and "--overwrite" in err
    # Only the run folder is taken (a new --out): still refused.
    assert run(argv(adience, tmp_path, "--out", str(tmp_path / "other" / "image_last.pth"))) == 2
    assert "log.jsonl already holds a run" in one_error_line(capsys)
    # Stage 2 must not write over its own --init file.
    assert (
        run(argv(adience, tmp_path, "--fusion", "afa", "--overwrite", "--init", str(tmp_path / "w" / "image_best.pth")))
        == 2
    )
    assert "would write over it" in one_error_line(capsys)
    assert digests(tmp_path) == first

    # --overwrite: the old run's files are replaced, its log and event files not appended to.
    old_events = sorted((tmp_path / "run").glob("events.out.tfevents.*"))
    assert run(argv(adience, tmp_path, "--fusion", "none", "--overwrite")) == 0
    assert "removed the earlier run's" in capsys.readouterr().out
    assert len(read_log(tmp_path / "run" / "log.jsonl")) == 1
    events = sorted((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(old_events) == 1 and len(events) == 1  # the same name: only its contents tell them apart
    tags = event_scalars(tmp_path / "run")
    assert "train/loss/gender" in tags and not any(t.startswith("fusion/") for t in tags)  # the new run's, not afa's
    assert json.loads((tmp_path / "run" / "args.json").read_text())["fusion"] == "none"
    assert load_checkpoint(tmp_path / "w" / "image_last.pth")["args"]["fusion"] == "none"


def test_resume_keeps_the_runs_settings_and_epochs_extend_it(adience, tmp_path, capsys):
    ck = str(tmp_path / "w" / "image_last.pth")
    assert run(argv(adience, tmp_path, "--fusion", "afa")) == 0
    assert load_checkpoint(ck)["train_state"]["schedule_total"] == 2
    before = digests(tmp_path)
    capsys.readouterr()

    # A setting that changes the run's meaning is refused by name; nothing is written.
    assert run(["--resume", ck, "--batch-size", "8"]) == 2
    assert one_error_line(capsys).startswith(f"error: --resume {ck}: --batch-size 8 differs from the run's 4;")
    # Also for args from parse_args (tests): a value other than the default counts as given.
    assert train_image.main(train_image.get_args_parser().parse_args(["--resume", ck, "--lr", "0.5"])) == 2
    assert "--lr 0.5 differs from the run's 0.001" in one_error_line(capsys)
    assert run(["--resume", ck, "--epochs", "0"]) == 2
    assert "extended, not shortened" in one_error_line(capsys)
    # Continuing somewhere that holds another run is refused as well.
    assert run(["--resume", ck, "--out", str(tmp_path / "w" / "image_best.pth")]) == 2
    assert "already belongs to another run" in one_error_line(capsys)
    assert digests(tmp_path) == before

    # --resume alone takes everything from the run (data, crop, fusion ...); --epochs 2 extends it.
    assert run(["--resume", ck, "--epochs", "2", "--log-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "resume: applied --epochs 2 (the run's: 1), --log-every 1 (the run's: 10)" in out
    assert "extending the run: --epochs 1 -> 2, poly schedule 2 -> 4 iterations; base lr at iteration 2: 0 ->" in out
    state = load_checkpoint(ck)
    ts = state["train_state"]
    assert (ts["epoch"], ts["iteration"], ts["schedule_total"]) == (2, 4, 4)
    assert state["args"]["crop_size"] == 32 and state["args"]["fusion"] == "afa" and state["args"]["epochs"] == 2
    assert [r["epoch"] for r in read_log(tmp_path / "run" / "log.jsonl")] == [1, 2]  # the same run folder
    assert json.loads((tmp_path / "run" / "args.json").read_text())["epochs"] == 2


def test_extending_a_step_schedule_reports_its_own_rule(caplog):
    """--resume --epochs on a step schedule: the printed learning rates come from the step rule
    (gamma^(it // step)), the one Schedule the scheduler uses, not from the poly rule."""
    import argparse
    import logging

    from engine.runs import schedule_length
    from engine.schedule import Schedule

    settings = argparse.Namespace(
        epochs=3, lr=0.1, schedule="step", warmup_iters=0, step_every=0, step_epochs=1, step_gamma=0.5
    )
    resume = {"args": {"epochs": 2}, "train_state": {"iteration": 4, "schedule_total": 4}}
    with caplog.at_level(logging.INFO, logger="engine.runs"):
        assert schedule_length(settings, 2, resume) == 6
    # step every epoch of 2 iterations: at iteration 4 the factor is 0.5 ** 2, whatever the length
    assert "step schedule 4 -> 6 iterations; base lr at iteration 4: 0.025 -> 0.025" in caplog.text
    assert Schedule.of(settings, 2, 6).factor(4) == 0.25 == Schedule.of(settings, 2, 4).factor(4)
    poly = argparse.Namespace(**{**vars(settings), "schedule": "poly"})
    assert Schedule.of(poly, 2, 4).factor(4) == 0.0 < Schedule.of(poly, 2, 6).factor(4)
