"""Test sets already scored by an interrupted evaluation of the same model and settings.

A protocol evaluation generates answers for 20 test sets, hours on a GPU. Each set's answers
(and, in one process, its score) are written as soon as the set is finished, so a rerun skips
the sets already done instead of starting over.

Files live in the scored model's run directory, ``eval_parts/<key>/<set>-<spec>.<r>-of-<w>.json``:

- ``key`` digests everything that decides an answer: the trainable weights themselves, the
  model config (encoder, projector, decoder), the generation and test-data settings, the
  numerics (device type, decoder dtype, matmul precision, Lightning precision) and the code
  (git commit, versions of xares, torch, transformers, peft). A change to any of them is a new
  key, so nothing stale is reused. The test batch size is left out: answers do not depend on
  it. Scores are computed again from the kept answers.
- ``spec`` digests the set's own task entry (shards, label key, prompt, metric and arguments),
  so editing one set rescores that set only.
- ``r-of-w``: each process writes the rows of its slice; a set is reusable when the files of
  every process of the same world size (and worker count, which shapes the slices) are there.

Each file is written to a temporary name and renamed, so a kill never leaves a file that reads
as complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from xares.atomic import atomic_open
from xares.data.task_spec import test_set_id
from xares.fingerprint import fingerprint
from xares.layout import EVAL_PARTS
from xares.run.metadata import git_state

log = logging.getLogger(__name__)

FOLDER = EVAL_PARTS
VERSION = 1
# The data settings that change which clips are read or how they are encoded.
DATA_KEYS = ("eval_limit", "eval_max_seconds", "sample_rate")
PACKAGES = ("xares", "torch", "transformers", "peft", "torchaudio")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the trainable tensors (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def evaluation_key(
    config: Mapping[str, Any],
    weights: str,
    numerics: Mapping[str, Any],
    world_size: int = 1,
    num_workers: int = 0,
) -> str:
    """16 hex digits naming everything but the test sets that decides this evaluation's answers."""
    data = config.get("data") or {}
    parts = {
        "version": VERSION,
        "weights": weights,
        "model": {k: config.get(k) for k in ("encoder", "projector", "llm")},
        "generation": config.get("generation"),
        "data": {k: data.get(k) for k in DATA_KEYS},
        "numerics": dict(numerics),
        # The code that generated them: a fix in generation or decoding is a new key.
        "code": {"git": git_state(), "versions": {p: _version(p) for p in PACKAGES}},
        # One process: the rows do not depend on the slicing. Several: each file is one slice.
        "slices": [world_size, num_workers] if world_size > 1 else None,
    }
    return fingerprint(parts, 16)


class ScoredSets:
    """The finished test sets of one evaluation key: where they are written and read."""

    def __init__(
        self,
        directory: str | Path,
        key: str,
        specs: Mapping[str, Mapping[str, Any]],
        rank: int = 0,
        world_size: int = 1,
        also_read: tuple[str | Path, ...] = (),
    ):
        self.directory = Path(directory) / FOLDER / key
        self.read_from = [self.directory, *(Path(p) / FOLDER / key for p in also_read)]
        self.specs = {name: spec.get("set_id") or test_set_id(spec) for name, spec in specs.items()}
        self.rank, self.world_size = rank, world_size

    def _name(self, task: str, rank: int) -> str:
        # A test-set name may hold characters a file name cannot (`/`): the file is named by
        # a digest of it; the name itself is inside.
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
        return f"{safe}-{self.specs[task]}.{rank}-of-{self.world_size}.json"

    def save(self, task: str, payload: Mapping[str, Any]) -> None:
        """Write this process's part of ``task`` atomically; a failure costs only the reuse."""
        path = self.directory / self._name(task, self.rank)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as handle:
                json.dump({"task": task, "spec": self.specs[task], **payload}, handle)
        except OSError as error:
            log.warning(
                "%s: its answers could not be kept for a rerun (%s); the evaluation goes on",
                task,
                error,
            )

    def load(self, task: str) -> list[dict[str, Any]] | None:
        """Every process's part of ``task``, or ``None`` unless all of them are there."""
        if task not in self.specs:
            return None
        for folder in self.read_from:
            parts = []
            for rank in range(self.world_size):
                path = folder / self._name(task, rank)
                try:
                    part = json.loads(path.read_text())
                except (OSError, ValueError):
                    break
                if part.get("task") != task or part.get("spec") != self.specs[task]:
                    break
                parts.append(part)
            else:
                return parts
        return None
