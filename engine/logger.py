"""Run logging on the main process: TensorBoard scalars and images, one JSON line per epoch."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


class RunLogger:
    """TensorBoard (tensorboardX) under ``logdir`` and ``log.jsonl`` beside it; inactive off rank 0.

    Scalars go under heads: ``loss/<task>``, ``opt/lr``, ``val/<metric>``.
    """

    def __init__(self, logdir: str | Path | None, active: bool = True) -> None:
        self.active = active and logdir is not None
        self.logdir = Path(logdir) if self.active else None  # type: ignore[arg-type]
        # The event file opens at the first write, not here: a run is set up before --overwrite removes
        # the run it replaces (engine/runs.py start_run_folder), and an event file opened in the same
        # second would carry the old one's name (time and host) and be removed with it.
        self.writer = None

    def _tensorboard(self) -> Any:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.logdir))
        return self.writer

    def scalars(self, values: dict[str, float], step: int, head: str = "") -> None:
        if self.active:
            writer = self._tensorboard()
            for k, v in values.items():
                writer.add_scalar(f"{head}{k}", v, step)

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        """img: (H, W, 3) floats in [0, 1]."""
        if self.active:
            self._tensorboard().add_image(tag, img, step, dataformats="HWC")

    def epoch_line(self, record: dict[str, Any]) -> None:
        if self.active:
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
            self.logdir.mkdir(parents=True, exist_ok=True)
            with open(self.logdir / "log.jsonl", "a") as f:
                f.write(json.dumps(clean) + "\n")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _CurrentStdout(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout is at the time (pytest and tqdm replace it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_console(is_main: bool) -> None:
    """Console output of the scripts through ``logging``: messages as they are, on stdout, INFO and
    above on rank 0 (dataset reports such as Adience's dropped rows included), warnings only on the
    other ranks. Idempotent: one handler per process."""
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStdout) for h in root.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main else logging.WARNING)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run folder's log.jsonl."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
