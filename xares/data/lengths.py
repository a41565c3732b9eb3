"""The training mixture's batch lengths, drawn as training draws them and cached on disk.

The compiled step's shapes (:mod:`xares.models.shapes`) are chosen from these: each batch's
longest clip (audio samples), its token-id widths and each row's own lengths. They depend on
the data, the batching and the tokeniser, not on the encoder, so one file serves a sweep of
encoders; the encoder's frames per clip are worked out by the model from the samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xares.atomic import write_text
from xares.data.mixing import DatasetSource, TrainMixture

log = logging.getLogger(__name__)

FORMAT = "xares-batch-lengths/1"


def _shard_state(path: str) -> list[Any]:
    """A shard's path, size and modification time: a rewritten shard changes the key."""
    try:
        stat = os.stat(path)
        return [path, stat.st_size, int(stat.st_mtime)]
    except OSError:
        return [path, None, None]


def _tokeniser_id(text: Any) -> list[Any]:
    tokenizer = getattr(text, "tokenizer", None)
    probe = "The quick brown fox, 42 Hz; 声音."
    ids = text.ids([probe])[0] if hasattr(text, "ids") else []
    return [
        type(tokenizer).__name__,
        getattr(tokenizer, "name_or_path", None),
        getattr(text, "multiple", 1),
        ids,
    ]


def sample_key(
    sources: Sequence[DatasetSource], settings: dict[str, Any], text: Any, batches: int
) -> str:
    """A digest of everything that decides the sampled batches."""
    described = {
        "format": FORMAT,
        "sources": [
            [s.name, s.label_key, s.prompt, s.prob, s.label_join]
            + [_shard_state(p) for p in s.shards]
            for s in sources
        ],
        "settings": settings,
        "text": _tokeniser_id(text),
        "batches": batches,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def draw_batches(
    sources: Sequence[DatasetSource],
    text: Callable[..., dict[str, Any]],
    batches: int,
    **mixture: Any,
) -> list[dict[str, Any]]:
    """The first ``batches`` training batches' lengths, from fresh copies of ``sources``.

    Each entry holds ``samples`` (the padded audio length), ``prompt`` and ``target`` (the
    padded id widths) and ``rows``: per row (audio samples, prompt tokens, target tokens).
    """
    # Copies: their skip counters are their own, so the run's list of skipped clips and its
    # warnings count each clip once.
    fresh = [dataclasses.replace(s) for s in sources]
    stream = iter(TrainMixture(fresh, text=text, **mixture))
    return [lengths_of(next(stream)) for _ in range(batches)]


def lengths_of(batch: Mapping[str, Any]) -> dict[str, Any]:
    """One collated batch's entry of :func:`draw_batches`."""
    rows = zip(
        batch["audio_mask"].sum(-1).tolist(),
        batch["prompt_lengths"].tolist(),
        batch["target_lengths"].tolist(),
    )
    return {
        "samples": int(batch["audio"].shape[1]),
        "prompt": int(batch["prompt_ids"].shape[1]),
        "target": int(batch["target_ids"].shape[1]),
        "rows": [list(row) for row in rows],
    }


def training_lengths(
    sources: Sequence[DatasetSource],
    text: Callable[..., dict[str, Any]],
    batches: int,
    cache_dir: str | Path | None = None,
    **mixture: Any,
) -> list[dict[str, Any]]:
    """:func:`draw_batches`, read from ``cache_dir`` when the same batches were drawn before."""
    key = sample_key(sources, mixture, text, batches)
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("format") == FORMAT and len(stored["batches"]) == batches:
                log.info("batch lengths of the training mixture read from %s", path)
                return stored["batches"]
        except (OSError, ValueError, KeyError):
            log.warning("batch lengths in %s are unreadable; drawing them again", path)
    drawn = draw_batches(sources, text, batches, **mixture)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"format": FORMAT, "batches": drawn}))
        log.info("batch lengths of the training mixture (%d batches) saved to %s", batches, path)
    return drawn
