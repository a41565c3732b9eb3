"""Writing WebDataset tar shards for the generated suites."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import webdataset

# Fixed member metadata, so the same samples give byte-identical shards.
MEMBER_OPTIONS = {"user": "xares", "group": "xares", "mode": 0o644, "mtime": 1_700_000_000}


@contextlib.contextmanager
def shard_writer(path: Path) -> Iterator[webdataset.TarWriter]:
    """A ``TarWriter`` for ``path`` whose shard appears under that name only once complete.

    Samples are written as given (``{"__key__": ..., "<ext>": bytes}``): no encoding,
    so the member bytes are exactly the caller's. A reader, or a second process
    checking for the suite, never sees a half-written shard; a failed write
    leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with webdataset.TarWriter(str(tmp), encoder=False, **MEMBER_OPTIONS) as writer:
            yield writer
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
