"""A real, tiny file system for tests of full-disk handling (skipped where mounting is refused)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` for the duration of the block.

    Needs root (or CAP_SYS_ADMIN) and a ``mount`` binary; the test is skipped otherwise, since
    an injected error covers the same code path and this only confirms what a real disk does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield directory
    finally:
        # Lazy: a file a failed test left open must not keep the mount (and the test run) busy.
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)
