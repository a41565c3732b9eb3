"""The run plan is checked before any weight is loaded, so a mistake costs seconds, not a
training budget.

``check_run`` reads the task file through its schema, builds every metric and checks the
numeric settings; ``check_data`` (after a generated task has written its data) resolves
every shard the run will read, test sets included. Each reports all of its problems at once.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xares.data.samples import undecodable_formats
from xares.data.shards import MissingShardError, resolve_shards
from xares.data.task_spec import TaskConfigError, TaskSpec
from xares.layout import predictions_file
from xares.metrics import build_metric
from xares.results.intervals import IntervalSettings

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The composed configuration cannot run; nothing has been loaded or trained yet."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the configuration (nothing was loaded or "
            f"trained):\n{lines}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def plain(node: Any) -> Any:
    """A config node as resolved plain Python (dicts and lists); any other value unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# numpy's legacy generator, which Lightning seeds, takes an unsigned 32-bit seed.
MAX_SEED = 2**32 - 1
# Characters no file name can hold on Linux, macOS or Windows (control characters too).
_NOT_IN_FILE_NAMES = set('/\\:*?"<>|')
_GIB = 2**30


def memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or a container's lower limit."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def _batch_memory_problem(
    setting: str, rows: int, buffer: int, seconds: float, rate: int, length_from: str, hint: str
) -> str | None:
    """A batch whose audio alone cannot fit in memory, said before any clip is read.

    The clips a batch is drawn from (a sort buffer at least as large as the batch) and the
    padded batch are both held at once, as float32; clips are taken as long as the longest
    allowed, so short clips are overestimated, but the model's activations for the batch
    (many times the audio) are left out, so only what cannot possibly run is refused.
    """
    memory = memory_bytes()
    clips = max(rows, buffer) + rows
    need = clips * seconds * rate * 4
    if memory is None or need <= memory:
        return None
    return (
        f"{setting}={rows}: forming one batch holds {clips} clips of up to {seconds:g} s "
        f"({length_from}) at {rate} Hz, about {need / _GIB:.1f} GiB of float32 audio before "
        f"the model sees it, more than the {memory / _GIB:.1f} GiB of memory here; write a "
        f"smaller {setting} ({hint})"
    )


def _memory_problems(
    data: Mapping[str, Any], task: Mapping[str, Any], *, train: bool, evaluate: bool
) -> list[str]:
    """Batches (by the data settings and the task's test batch sizes) that cannot fit in memory."""
    problems: list[str] = []
    rate = data.get("sample_rate")
    if not (_int(rate) and rate > 0):
        return problems  # reported as a bad number already
    rows, seconds = data.get("batch_size"), data.get("crop_seconds")
    buffer = data.get("sort_buffer")
    if train and _int(rows) and rows >= 1 and _positive_number(seconds) and _int(buffer):
        length = f"data.crop_seconds={seconds:g}"
        problem = _batch_memory_problem(
            "data.batch_size", rows, buffer, seconds, rate, length, "the protocol's is 4"
        )
        if problem:
            problems.append(problem)
    seconds, buffer = data.get("eval_max_seconds"), data.get("eval_sort_buffer")
    # Test clips are encoded whole: their length is known only when cut.
    if not (evaluate and _positive_number(seconds) and _int(buffer)):
        return problems
    length = f"data.eval_max_seconds={seconds:g}"
    hint = "scores do not depend on it"
    shared = data.get("eval_batch_size")
    if _int(shared) and shared >= 1:
        problem = _batch_memory_problem(
            "data.eval_batch_size", shared, buffer, seconds, rate, length, hint
        )
        return problems + ([problem] if problem else [])
    for name, entry in (task.get("eval") or {}).items():
        rows = entry.get("batch_size") if isinstance(entry, Mapping) else None
        if _int(rows) and rows >= 1:
            setting = f"task.eval.{name}.batch_size"
            problem = _batch_memory_problem(setting, rows, buffer, seconds, rate, length, hint)
            if problem:
                problems.append(problem)
    return problems


def _name_problems(names: Any) -> list[str]:
    """Test set names that cannot be part of a file name, as each set's predictions file is."""
    problems = []
    for name in names:
        name = str(name)
        bad = sorted({c for c in name if c in _NOT_IN_FILE_NAMES or ord(c) < 32 or ord(c) == 127})
        if not bad:
            continue
        shown = ", ".join(repr(c) for c in bad)
        fixed = "".join("_" if c in bad else c for c in name)
        problems.append(
            f"task.eval.{name!r}: a test set's name is part of the files a run writes "
            f"({predictions_file(name)}) and of its metric keys, and these characters cannot be "
            f"in a file name: {shown}; rename the set, e.g. to {fixed!r}"
        )
    return problems


def check_settings(cfg: DictConfig, *, train: bool, evaluate: bool) -> list[str]:
    """Problems with the numeric run settings (``data``, ``trainer``, ``generation``)."""
    from xares.training.datamodule import DataSettings

    problems: list[str] = []
    data = plain(cfg.get("data")) or {}
    accepted = DataSettings.names()
    for key in data:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean `data.{close[0]}`?)" if close else ""
            problems.append(
                f"data.{key}: unknown setting{hint}; valid: {', '.join(sorted(accepted))}"
            )

    for key in accepted:
        if key not in data:
            problems.append(f"data.{key}: missing; conf/train.yaml's `data` section sets it")

    def need(key: str, ok: bool, fix: str) -> None:
        if key in data and not ok:
            problems.append(f"data.{key}={data[key]!r}: {fix}")

    value = data.get
    need("batch_size", _int(value("batch_size")) and value("batch_size") >= 1, "write 1 or more")
    for key in ("eval_batch_size", "eval_limit"):
        v = value(key)
        need(key, v is None or (_int(v) and v >= 1), "write 1 or more, or null for the default")
    need("num_workers", _int(value("num_workers")) and value("num_workers") >= 0, "write 0 or more")
    need(
        "shuffle_buffer",
        _int(value("shuffle_buffer")) and value("shuffle_buffer") >= 1,
        "write 1 or more",
    )
    for key in ("sort_buffer", "eval_sort_buffer"):
        need(key, _int(value(key)) and value(key) >= 0, "write 0 or more")
    need("crop_seconds", _positive_number(value("crop_seconds")), "write a number of seconds > 0")
    v = value("eval_max_seconds")
    need("eval_max_seconds", v is None or _positive_number(v), "write seconds > 0, or null")
    need(
        "sample_rate",
        _int(value("sample_rate")) and value("sample_rate") > 0,
        "write a rate in Hz, e.g. 16000",
    )

    if "seed" in cfg:
        seed = cfg.get("seed")
        if not (_int(seed) and 0 <= seed <= MAX_SEED):
            problems.append(
                f"seed={seed!r}: write a whole number from 0 to {MAX_SEED} (the range numpy's "
                "random generator accepts), e.g. seed=42"
            )
    problems += _memory_problems(data, plain(cfg.get("task")) or {}, train=train, evaluate=evaluate)

    trainer = plain(cfg.get("trainer")) or {}
    if train and not trainer.get("fast_dev_run"):
        steps = trainer.get("max_steps")
        if not _int(steps) or steps < 0:
            problems.append(
                f"trainer.max_steps={steps!r}: training would never end (Lightning reads a "
                "negative budget as 'no limit' and the training stream is endless); write the "
                "number of optimiser steps, e.g. trainer.max_steps=1000"
            )
        elif steps == 0:
            problems.append(
                "trainer.max_steps=0 trains nothing: write train=false to evaluate without "
                "training (with ckpt_path=... for a trained model), or a positive step count"
            )
    generation = plain(cfg.get("generation")) or {}
    tokens = generation.get("max_new_tokens")
    if evaluate and tokens is not None and not (_int(tokens) and tokens >= 1):
        problems.append(f"generation.max_new_tokens={tokens!r}: write 1 or more")
    if evaluate:
        try:
            IntervalSettings.of(plain(cfg.get("intervals")))
        except (ValueError, TypeError) as error:
            problems.append(f"intervals: {error}")
    return problems


def check_task(task: TaskSpec, *, train: bool, evaluate: bool) -> list[str]:
    """Problems a valid schema does not exclude: empty sections, zero mixtures, metrics."""
    problems: list[str] = []
    if train:
        if not task.train:
            problems.append(
                f"task {task.name} has no `train` datasets: add some, or train=false to only evaluate"
            )
        elif all(s.prob is not None for s in task.train.values()) and not any(
            s.prob for s in task.train.values()
        ):
            problems.append(
                f"task {task.name}: every training dataset has prob 0; give at least one a "
                "positive prob (or null for its share of shards)"
            )
    if evaluate:
        if not task.eval:
            problems.append(
                f"task {task.name} has no `eval` test sets: add some, or evaluate=false to only train"
            )
        for name, spec in task.eval.items():
            problems += _metric_problem(name, spec.metric, spec.metric_args)
    return problems


def _metric_problem(name: str, metric: Any, args: Any) -> list[str]:
    try:
        build_metric(metric, args)
    except Exception as error:  # unknown name, bad arguments: the metric's own words
        return [f"task.eval.{name}: metric {metric}: {error}"]
    return []


def check_run(
    cfg: DictConfig, *, train: bool | None = None, evaluate: bool | None = None
) -> TaskSpec:
    """The task as a typed spec; raises ``ConfigError`` listing every problem found."""
    train = bool(cfg.get("train", True)) if train is None else train
    evaluate = bool(cfg.get("evaluate", True)) if evaluate is None else evaluate
    problems = check_settings(cfg, train=train, evaluate=evaluate)
    task = None
    raw = plain(cfg.task)
    if evaluate and isinstance(raw, Mapping) and isinstance(raw.get("eval"), Mapping):
        problems += _name_problems(raw["eval"])
    try:
        task = TaskSpec.parse(raw)
    except TaskConfigError as error:
        problems += [f"task.{p}" for p in error.problems]
        # The metrics are still worth checking, so one run reports every mistake.
        for name, entry in ((raw.get("eval") or {}) if evaluate else {}).items():
            if isinstance(entry, Mapping) and isinstance(entry.get("metric"), str):
                problems += _metric_problem(name, entry["metric"], entry.get("metric_args") or {})
    if task is not None:
        problems += check_task(task, train=train, evaluate=evaluate)
    if problems:
        raise ConfigError(problems)
    return task


def check_data(
    task: TaskSpec,
    *,
    train: bool,
    evaluate: bool,
    data_dir: str | None = None,
    download: bool = True,
) -> None:
    """Resolve (and fetch) every shard the run will read; one error names all that are missing."""
    missing_formats = undecodable_formats()
    if missing_formats:
        log.warning(
            "audio members in %s format cannot be decoded here and will be skipped as bad "
            "audio; `pip install av` decodes them",
            ", ".join(missing_formats),
        )
    sections: list[Mapping[str, Any]] = []
    if train:
        sections.append(task.train)
    if evaluate:
        sections.append(task.eval)
    errors: list[MissingShardError] = []
    for section in sections:
        for spec in section.values():
            try:
                resolve_shards(
                    spec.shards, spec.repo_id, download=download, task=task.name, cache_dir=data_dir
                )
            except MissingShardError as error:
                errors.append(error)
    if errors:
        raise MissingShardError.merge(errors, download=download, task=task.name)
