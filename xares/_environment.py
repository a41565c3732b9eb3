"""The one environment fact xares checks at import: torch and torchaudio load together.

torchaudio's native library is built against one torch release. Beside any other torch it
fails to load with an ``OSError`` about an undefined symbol, raised from whatever happens to
import torchaudio first, often deep inside ``transformers``. Checking here turns that into
one message that names both installed versions and the command that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable

# The pair uv.lock installs (tests/test_environment.py keeps the two in step).
LOCKED_TORCH = "2.10.0"
LOCKED_TORCHAUDIO = "2.10.0"

# The newest torch a torchaudio is published for with a matching version number and an exact
# torch requirement; pyproject.toml allows up to here.
_NEWEST_PAIRED = (2, 10)


class BrokenTorchPairError(ImportError):
    """torch and torchaudio are installed but torchaudio does not load against this torch."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    digits = []
    for part in version.split("+")[0].split("."):
        if not part.isdigit():
            break
        digits.append(int(part))
    return tuple(digits)


def fix_command(torch_version: str | None) -> str:
    """The pip command that gives this environment a matching torchaudio (or pair)."""
    locked = f'pip install "torch=={LOCKED_TORCH}" "torchaudio=={LOCKED_TORCHAUDIO}"'
    if torch_version is None:
        return locked
    base, _, local = torch_version.partition("+")
    if not ((2, 4) <= _release(base)[:2] <= _NEWEST_PAIRED):
        return locked
    # Keep the installed torch; a CUDA or CPU build needs torchaudio from the same index.
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
    return f'pip install "torchaudio=={base}"{index}'


def describe_broken_pair(
    torch_version: str | None, torchaudio_version: str | None, cause: str
) -> str:
    reason = cause.strip().splitlines()[0] if cause.strip() else "no reason given"
    return (
        f"xares cannot start: torchaudio {torchaudio_version or '(not installed)'} does not load "
        f"against the installed torch {torch_version or '(not installed)'}.\n"
        f"  cause: {reason}\n"
        "  torch and torchaudio must be a pair built for each other (torchaudio X.Y.Z for torch "
        "X.Y.Z).\n"
        f"  fix, in a clone of xares: `make install` (the locked pair, torch {LOCKED_TORCH} + "
        f"torchaudio {LOCKED_TORCHAUDIO})\n"
        f"  fix, in your own environment: {fix_command(torch_version)}"
    )


def check_torch_pair(load: Callable[[str], object] = importlib.import_module) -> None:
    """Import torchaudio (which loads its native library); raise one clear error if it fails."""
    try:
        load("torchaudio")
    except (OSError, RuntimeError, ImportError) as err:
        # A torchaudio that is simply missing is an ImportError too, reported the same way.
        message = describe_broken_pair(_version("torch"), _version("torchaudio"), str(err))
        raise BrokenTorchPairError(message) from None
