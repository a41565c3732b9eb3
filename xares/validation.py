"""The run plan is checked before any weight is loaded, so a mistake costs seconds, not a
training budget.

``check_run`` reads the task file through its schema, builds every metric and checks the
numeric settings; ``check_data`` (after a generated task has written its data) resolves
every shard the run will read, test sets included. Each reports all of its problems at once.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xares.data.samples import undecodable_formats
from xares.data.shards import MissingShardError, resolve_shards
from xares.data.task_spec import TaskConfigError, TaskSpec
from xares.metrics import build_metric

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


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_settings(cfg: DictConfig, *, train: bool, evaluate: bool) -> list[str]:
    """Problems with the numeric run settings (``data``, ``trainer``, ``generation``)."""
    from xares.training.datamodule import TaskDataModule

    problems: list[str] = []
    data = _plain(cfg.get("data")) or {}
    # What the data module takes, less what the run passes itself.
    own = {"task", "seed", "data_dir", "cuda_eval_batch_size"}
    accepted = [p for p in inspect.signature(TaskDataModule).parameters if p not in own]
    for key in data:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean `data.{close[0]}`?)" if close else ""
            problems.append(
                f"data.{key}: unknown setting{hint}; valid: {', '.join(sorted(accepted))}"
            )

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

    trainer = _plain(cfg.get("trainer")) or {}
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
    generation = _plain(cfg.get("generation")) or {}
    tokens = generation.get("max_new_tokens")
    if evaluate and tokens is not None and not (_int(tokens) and tokens >= 1):
        problems.append(f"generation.max_new_tokens={tokens!r}: write 1 or more")
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
    raw = _plain(cfg.task)
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
