"""Run safety: a fresh run never writes over another run, and ``--resume`` continues the run as it was.

A *run* is a checkpoint (``--out`` and its ``*_best.pth``) plus a run folder (``--logdir``:
TensorBoard event files, ``log.jsonl``, ``args.json``). The rules, used by ``engine.train``:

- A fresh run into an ``--out`` / ``--logdir`` that already holds a run stops with one line
  naming the ways out (``--resume``, a new ``--out``/``--logdir``, ``--overwrite``); with
  ``--overwrite`` the old run's files are removed before the new run writes its own.
- ``args.json`` in the run folder holds every setting under its argparse name.
- ``--resume`` takes the run's settings from the checkpoint. A setting given on the command line
  that changes what the run computes is refused; the ones in ``SAFE_ON_RESUME`` are applied and
  printed. ``--epochs`` larger than the run's extends it: the schedule is stretched to the new length.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .schedule import Schedule

# The one list of settings that --resume lets the command line change (everything else, including
# flags added later, is part of the run's meaning: batch size, learning rate and schedule, fusion and
# gradient mode, data, crop size, seed, AMP precision, BatchNorm options ...). dest -> why it is safe.
SAFE_ON_RESUME: dict[str, str] = {
    "epochs": "extends the run (the schedule is stretched to the new length; never shortened)",
    "workers": "loader processes: samples are seeded by (seed, epoch, index), not by worker",
    "device": "where the same computation runs",
    "channels_last": "memory layout only",
    "log_every": "logging",
    "logdir": "where logs go (must not hold another run)",
    "out": "where checkpoints go (must not hold another run)",
}
# Run control: describes this invocation, never taken from the checkpoint.
RUN_CONTROL = ("resume", "overwrite")

log = logging.getLogger(__name__)
ARGS_FILE = "args.json"
LOG_FILE = "log.jsonl"
EVENTS_GLOB = "events.out.tfevents.*"


class RunError(Exception):
    """A command line that would damage or change a run: printed as one line, exit code 2."""


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def parse_with_explicit(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, set[str]]:
    """Parse ``argv`` and also return the dests the user typed (whatever their value).

    The second parse starts from a namespace where every dest is already set to a marker:
    argparse fills in defaults only for attributes the namespace lacks, so whatever is not
    the marker afterwards came from the command line.
    """
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in vars(args)}))
    return args, {k for k, v in vars(probe).items() if v is not unset}


def explicit_by_default(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """For args that come without that information (``parser.parse_args`` in tests): a value that
    differs from the parser's default counts as given."""
    return {k for k, v in vars(args).items() if not _same(v, parser.get_default(k))}


def _plain(v: Any) -> Any:
    return str(v) if isinstance(v, os.PathLike) else v


def _same(a: Any, b: Any) -> bool:
    dump = lambda v: json.dumps(_plain(v), sort_keys=True, default=str)  # noqa: E731  (lists == tuples)
    return dump(a) == dump(b)


def _show(v: Any) -> str:
    v = _plain(v)
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return json.dumps(v) if isinstance(v, dict) else str(v)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resume_run(
    args: argparse.Namespace, kind: str, explicit: set[str] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The settings of the run to train, and its checkpoint when ``--resume`` continues one (else None).

    A fresh run: the parsed values as they are. ``--resume``: load the checkpoint, check it is a
    resumable one of this kind, and take the run's own settings, except the safe ones typed on the
    command line. ``args`` itself is never changed: the result is a new dict.

    ``explicit``: the dests given on the command line (None: every value counts as given).
    Raises RunError naming every typed flag that would change the run's meaning.
    """
    values = dict(vars(args))
    if not args.resume:
        if values.get("data_root", "") is None:
            raise RunError("--data-root is required (with --resume CKPT the run's own is used)")
        return values, None
    ck = load_checkpoint(args.resume)
    if ck.get("kind") != kind:
        raise RunError(f"--resume {args.resume}: a {ck.get('kind')!r} checkpoint, this script trains {kind!r} networks")
    if "optimizer" not in ck:
        raise RunError(
            f"--resume {args.resume}: a best-by-validation file holds the model only (for eval.py "
            "and --init); resume from the run's latest state (its --out file, *_last.pth)"
        )
    if values.get("overwrite"):
        raise RunError(f"--resume {args.resume}: --overwrite is for a fresh run; drop one of the two")
    stored: dict[str, Any] = ck.get("args") or {}
    given = set(values) if explicit is None else explicit
    refused, applied = [], []
    for dest, value in vars(args).items():
        if dest in RUN_CONTROL or dest not in stored:  # a flag newer than the checkpoint keeps its value
            continue
        old = stored[dest]
        changed = dest in given and not _same(value, old)
        if not changed:
            values[dest] = old
        elif dest in SAFE_ON_RESUME:
            applied.append(f"{flag(dest)} {_show(value)} (the run's: {_show(old)})")
        else:
            refused.append(f"{flag(dest)} {_show(value)} differs from the run's {_show(old)}")
    if refused:
        raise RunError(
            f"--resume {args.resume}: {'; '.join(refused)}; a resumed run keeps its settings: drop "
            f"{'it' if len(refused) == 1 else 'them'}, or start a new run (a new --out/--logdir)"
        )
    if "epochs" in stored and values["epochs"] < stored["epochs"]:
        raise RunError(
            f"--resume {args.resume}: --epochs {values['epochs']} is shorter than the run's "
            f"{stored['epochs']}; a run can be extended, not shortened (stop it instead)"
        )
    if applied and _is_main():
        log.info("resume: applied " + ", ".join(applied))
    return values, ck


def run_files(out: str | Path | None, best: str | Path | None, logdir: str | Path | None) -> list[Path]:
    """The files of a run found at these places (None: not looked at): checkpoints, and the run
    folder's log.jsonl, args.json and TensorBoard event files."""
    found = [Path(p) for p in (out, best) if p is not None and Path(p).is_file()]
    if logdir is not None and Path(logdir).is_dir():
        logdir = Path(logdir)
        found += [p for p in (logdir / LOG_FILE, logdir / ARGS_FILE) if p.is_file()]
        found += sorted(logdir.glob(EVENTS_GLOB))
    return found


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_run_folders(args: argparse.Namespace, best: str | Path, resume: dict[str, Any] | None) -> list[Path]:
    """Refuse a start that would write over another run; returns the old files that ``--overwrite``
    replaces (removed by ``start_run_folder``). Call once ``args.out`` and ``args.logdir`` are set."""
    if resume is not None:
        # The run's own files are expected where it left them; a new place must not hold another run.
        stored = resume.get("args") or {}
        new_out = stored.get("out") is not None and not _same_path(args.out, stored["out"])
        new_log = stored.get("logdir") is not None and not _same_path(args.logdir, stored["logdir"])
        found = run_files(args.out if new_out else None, best if new_out else None, args.logdir if new_log else None)
        if found:
            raise RunError(
                f"--resume {args.resume}: {found[0]} already belongs to another run; continue into an "
                "empty --out/--logdir, or leave them as the run's"
            )
        return []
    init = getattr(args, "init", None)  # stage 2 only (a family without stages has no --init)
    if init and (_same_path(init, args.out) or _same_path(init, best)):
        raise RunError(
            f"--init {init}: this run would write over it (its checkpoints are {args.out} and "
            f"{best}); give the new run another --out"
        )
    found = run_files(args.out, best, args.logdir)
    if found and not getattr(args, "overwrite", False):
        resume = f"continue it with --resume {args.out}, " if Path(args.out).is_file() else ""
        raise RunError(
            f"{found[0]} already holds a run; {resume}choose a new --out/--logdir, or pass --overwrite to replace it"
        )
    return found


def write_args(args: argparse.Namespace, logdir: str | Path) -> Path:
    """``args.json`` in the run folder: every setting under its argparse name (paths as strings),
    written to a temporary file and renamed."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({k: _plain(v) for k, v in vars(args).items()}, indent=1, default=str) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{ARGS_FILE}.", suffix=".tmp", dir=logdir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, logdir / ARGS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return logdir / ARGS_FILE


def start_run_folder(args: argparse.Namespace, replaced: list[Path], is_main: bool) -> None:
    """Just before training writes anything: remove the files of the run that ``--overwrite``
    replaces (its event files and log.jsonl are removed, not appended to), then write args.json."""
    if not is_main:
        return
    for p in replaced:
        p.unlink(missing_ok=True)
    if replaced:
        log.info(f"--overwrite: removed the earlier run's {len(replaced)} files ({', '.join(map(str, replaced))})")
    write_args(args, args.logdir)


def schedule_length(args: argparse.Namespace, iters_per_epoch: int, resume: dict[str, Any] | None) -> int:
    """Total iterations of the learning-rate schedule. A fresh run: epochs x iterations per epoch. A
    resumed run keeps the length stored in its checkpoint, unless ``--epochs`` extends it: then the
    new epochs' iterations are added (printed with the learning rate before and after, at the
    current iteration, by the run's own schedule rule)."""
    if resume is None:
        return args.epochs * iters_per_epoch
    run_epochs = (resume.get("args") or {}).get("epochs", args.epochs)
    total = resume["train_state"].get("schedule_total") or run_epochs * iters_per_epoch
    if args.epochs == run_epochs:
        return total
    new_total = total + (args.epochs - run_epochs) * iters_per_epoch
    if _is_main():
        it = resume["train_state"]["iteration"]

        def lr(t: int) -> float:
            return args.lr * Schedule.of(args, iters_per_epoch, t).factor(it)

        log.info(
            f"extending the run: --epochs {run_epochs} -> {args.epochs}, {args.schedule} schedule {total} -> "
            f"{new_total} iterations; base lr at iteration {it}: {lr(total):.4g} -> {lr(new_total):.4g}"
        )
    return new_total
