"""Errors raised for bad dataset inputs; the command-line tools print their message and exit with code 2."""

from pathlib import Path


class DataError(Exception):
    """A dataset file or folder is missing, malformed or not the expected format (one-line message)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A required dataset file or folder does not exist; also catchable as FileNotFoundError."""


def require_file(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise DataNotFoundError naming it and the expected `what`."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: not found (expected {what})")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise DataNotFoundError naming it and the expected `what`."""
    path = Path(path)
    if not path.is_dir():
        raise DataNotFoundError(f"{path}: folder not found (expected {what})")
    return path
