"""Writing the mini suite: size presets, shards, the manifest and the generation lock.

``ensure_mini_suite(root)`` renders every clip with the recipes in
:mod:`xares.suites.mini.recipes` and writes them as WebDataset tar shards:
``<root>/<task>/<split>/<task>_<split>_NNNNNN.tar`` holding ``<key>.flac`` (16 kHz mono,
16-bit) and ``<key>.json`` (the label fields). A ``manifest.json`` records the generator
version, seed and sizes; a matching manifest makes the call a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from xares.data.tar_shards import shard_writer

from . import recipes
from .recipes import GENERATOR_VERSION, SPLITS, TASKS, balanced_labels
from .speech import SAMPLE_RATE

SAMPLES_PER_SHARD = 200

SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"train": 16, "test": 8},
    "default": {"train": 320, "test": 64},
}


# --------------------------------------------------------------------------- sizes


def resolve_sizes(size: str | Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``"tiny"`` / ``"default"`` for every task, or ``{task: {train: n, test: n}}``.

    A mapping may name a subset of the tasks; only those are generated.
    """
    if isinstance(size, str):
        if size not in SIZE_PRESETS:
            raise ValueError(
                f"Unknown mini-suite size {size!r}; use one of {sorted(SIZE_PRESETS)} "
                "or a mapping {task: {train: n, test: n}}."
            )
        return {name: dict(SIZE_PRESETS[size]) for name in TASKS}
    if not isinstance(size, Mapping):
        raise TypeError(f"size must be a preset name or a mapping, not {type(size).__name__}")
    out: dict[str, dict[str, int]] = {}
    for name, counts in size.items():
        if name not in TASKS:
            raise ValueError(f"Unknown mini-suite task {name!r}; tasks are {list(TASKS)}.")
        if not isinstance(counts, Mapping) or set(counts) - set(SPLITS):
            raise ValueError(f"size[{name!r}] must be a mapping with keys {SPLITS}.")
        out[str(name)] = {split: int(counts.get(split, 0)) for split in SPLITS}
    return out


def _render_job(job):
    return recipes.render_sample(*job)


@dataclass
class _ShardPlan:
    task: str
    split: str
    path: Path
    jobs: list[tuple[str, str, int, str | None, int]]


def _plan(root: Path, sizes: dict[str, dict[str, int]], seed: int) -> list[_ShardPlan]:
    plans = []
    for name, counts in sizes.items():
        for split in SPLITS:
            n = counts[split]
            labels = balanced_labels(TASKS[name], split, n, seed)
            jobs = [(name, split, i, labels[i], seed) for i in range(n)]
            for s, start in enumerate(range(0, n, SAMPLES_PER_SHARD)):
                path = root / name / split / f"{name}_{split}_{s:06d}.tar"
                plans.append(_ShardPlan(name, split, path, jobs[start : start + SAMPLES_PER_SHARD]))
    return plans


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    # Worker processes read these at start-up; one BLAS/OpenMP thread each keeps
    # N workers on N cores instead of N x cores threads fighting.
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _render_all(jobs, workers: int) -> Iterator[tuple[str, bytes, bytes]]:
    if workers <= 1:
        for job in jobs:
            yield _render_job(job)
        return
    import multiprocessing as mp

    # spawn: forking a process that may already hold torch / OpenMP threads can deadlock.
    ctx = mp.get_context("spawn")
    with _single_threaded_children():
        pool = ctx.Pool(workers)
    with pool:
        yield from pool.imap(_render_job, jobs, chunksize=4)


def _write_shards(plans: list[_ShardPlan], workers: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    jobs = [job for plan in plans for job in plan.jobs]
    results = _render_all(jobs, workers)
    # Redirected to a log, a bar redraws as new lines: a few a minute there, not hundreds.
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=len(jobs),
        desc="mini suite",
        unit="clip",
        disable=not progress,
        mininterval=0.1 if interactive else 15.0,
    )
    try:
        for plan in plans:
            with shard_writer(plan.path) as shard:
                for _ in plan.jobs:
                    key, flac, meta = next(results)
                    shard.write({"__key__": key, "flac": flac, "json": meta})
                    bar.update(1)
    finally:
        bar.close()
        results.close()  # type: ignore[attr-defined]  # a generator


# --------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_current(root: Path, seed: int, sizes: dict[str, dict[str, int]]) -> bool:
    manifest = _read_manifest(root / "manifest.json")
    if not manifest:
        return False
    if (
        manifest.get("generator_version") != GENERATOR_VERSION
        or manifest.get("seed") != seed
        or manifest.get("sizes") != sizes
    ):
        return False
    shards = [s for task in manifest.get("tasks", {}).values() for s in task.get("shards", [])]
    return all((root / s).is_file() for s in shards)


def _clear(root: Path) -> None:
    for name in TASKS:
        for split in SPLITS:
            d = root / name / split
            if d.is_dir():
                for f in d.iterdir():
                    if f.suffix == ".tar" or ".tar.tmp" in f.name:
                        f.unlink()
        with contextlib.suppress(OSError):
            for split in SPLITS:
                (root / name / split).rmdir()
            (root / name).rmdir()


def ensure_mini_suite(
    root: str | os.PathLike,
    seed: int = 0,
    size: str | Mapping[str, Any] = "default",
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Make sure the mini suite for ``seed`` and ``size`` exists under ``root``.

    Returns ``root`` immediately when its ``manifest.json`` matches (generator
    version, seed, sizes) and every listed shard is present; otherwise deletes any
    old shards and generates the suite. ``workers`` > 1 renders clips in that many
    processes; the output does not depend on it.
    """
    root = Path(root)
    sizes = resolve_sizes(size)
    seed = int(seed)
    if _is_current(root, seed, sizes):
        return root
    root.mkdir(parents=True, exist_ok=True)
    # Several processes (e.g. DDP ranks) may prepare the suite at once: one
    # generates, the others wait and then find the manifest current.
    with FileLock(root / ".lock"):
        if _is_current(root, seed, sizes):
            return root
        with contextlib.suppress(FileNotFoundError):
            (root / "manifest.json").unlink()
        _clear(root)
        plans = _plan(root, sizes, seed)
        start = time.perf_counter()
        _write_shards(plans, max(1, int(workers)), progress)
        tasks: dict[str, Any] = {}
        for plan in plans:
            entry = tasks.setdefault(plan.task, {"counts": dict.fromkeys(SPLITS, 0), "shards": []})
            entry["counts"][plan.split] += len(plan.jobs)
            entry["shards"].append(plan.path.relative_to(root).as_posix())
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "sizes": sizes,
            "sample_rate": SAMPLE_RATE,
            "tasks": tasks,
        }
        tmp = root / f"manifest.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, root / "manifest.json")
        if progress:
            elapsed = time.perf_counter() - start
            n = sum(len(p.jobs) for p in plans)
            print(f"mini suite: {n} clips in {elapsed:.1f} s -> {root}")
    return root


def remove_mini_suite(root: str | os.PathLike) -> None:
    """Delete a generated suite (shards, manifest, lock)."""
    root = Path(root)
    _clear(root)
    for name in ("manifest.json", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    with contextlib.suppress(OSError):
        root.rmdir()


__all__ = [
    "SAMPLES_PER_SHARD",
    "SIZE_PRESETS",
    "ensure_mini_suite",
    "remove_mini_suite",
    "resolve_sizes",
]
