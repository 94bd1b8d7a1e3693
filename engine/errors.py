"""How a script's failures reach the shell: one line on stderr and an exit code, from one table.

| exit | meaning |
|---|---|
| 2 | a user mistake: a flag, a path, a dataset or checkpoint that does not fit (nothing was damaged) |
| 3 | training diverged: a non-finite loss; the last good checkpoint is kept |
| 4 | a checkpoint could not be written (full disk, permissions); the previous file is intact |
| 128 + N | stopped by signal N (SIGINT 130, SIGTERM 143) after saving a resumable checkpoint |
"""

from __future__ import annotations

from data.errors import DataError

from .checkpoint import CheckpointError, CheckpointWriteError
from .precision import PrecisionError
from .runs import RunError


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


class NonFiniteLoss(Exception):
    """A task's loss became NaN or infinite: training stops (exit code 3)."""


# (exception types, exit code, what is appended to the message); the first match wins.
EXIT_CODES: list[tuple[tuple[type[BaseException], ...], int, str]] = [
    ((CheckpointWriteError,), 4, "; stopped"),
    ((NonFiniteLoss,), 3, "; stopped, the last good checkpoint is kept"),
    ((UserError, RunError, DataError, CheckpointError, PrecisionError, FileNotFoundError), 2, ""),
]
HANDLED = tuple(t for types, _, _ in EXIT_CODES for t in types)


def exit_code(error: BaseException) -> tuple[int, str]:
    """(exit code, the one-line message) of a handled error."""
    for types, code, suffix in EXIT_CODES:
        if isinstance(error, types):
            return code, f"error: {error}{suffix}"
    raise TypeError(f"not a handled error: {error!r}")
