"""Files written whole or not at all: a temporary file in the same folder, then a rename.

A full disk, a kill or a permission error in the middle of a write must never leave a file
that looks complete (a 0-byte ``scores.json`` read back as a broken run) nor a stray
temporary file. A failed write raises :class:`WriteError`, which names the path and the cause.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class WriteError(OSError):
    """A file could not be written; nothing was left behind."""

    def __init__(self, path: str | Path, cause: BaseException):
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(getattr(cause, "errno", None), f"could not write {path}: {reason}")
        self.path = Path(path)
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[1])


def temporary_beside(path: Path) -> Path:
    """A hidden name in the same folder (so the rename is atomic), unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through (by a library that takes a file name)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(path, error) from error
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content appears at ``path`` only once it is all written."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
