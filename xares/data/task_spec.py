"""The typed schema of a task file: its training datasets and its test sets.

A task file is plain YAML composed by Hydra, so a mistyped key (``lable_key:``) would
otherwise be carried along unread while a default took its place. ``TaskSpec.parse``
reads every entry into a dataclass, fills the defaults in one place, and reports every
problem at once: unknown keys (with the valid ones and the closest match), missing or
empty required keys, and values of the wrong type or sign.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xares.fingerprint import fingerprint


class TaskConfigError(ValueError):
    """A task file (or the composed ``task`` config) does not follow the schema."""

    def __init__(self, problems: list[str], task: str = "task"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{task}: {len(self.problems)} problem(s) in the task config:\n{lines}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class TrainSpec:
    """One training dataset of the mixture."""

    shards: list[str]
    prompt: str
    label_key: str = "label"  # `a;b;c`: the first present wins, then captions/caption/text
    repo_id: str | None = None
    prob: float | None = None  # None: the dataset's share of all shards in the mixture
    label_join: str | None = None  # join a list label into one multi-label answer


@dataclass(frozen=True)
class EvalSpec:
    """One test set: how its samples are read, and how its answers are scored and weighted."""

    shards: list[str]
    prompt: str
    label_key: str = "label"
    repo_id: str | None = None
    metric: str = "Accuracy"
    # Free-form: each metric takes its own arguments (e.g. mAP's num_classes).
    metric_args: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    weight: float = 1.0
    chance: float | None = None
    track: str | None = None
    label_join: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    train: dict[str, TrainSpec]
    eval: dict[str, EvalSpec]
    max_steps: int | None = None
    track: str | None = None
    prepare: dict[str, Any] | None = None  # a `_target_` call that generates the data

    @classmethod
    def parse(cls, task: Mapping[str, Any] | TaskSpec) -> TaskSpec:
        """Read a composed task config (a plain mapping); raise ``TaskConfigError`` listing
        every problem."""
        if isinstance(task, TaskSpec):
            return task
        name = str(task.get("name") or "task") if isinstance(task, Mapping) else "task"
        problems: list[str] = []
        if not isinstance(task, Mapping):
            raise TaskConfigError([f"must be a mapping, not {type(task).__name__}"], name)
        _unknown_keys(task, cls, "task", problems, ignore={"defaults"})
        sections = {}
        for section, spec_cls in (("train", TrainSpec), ("eval", EvalSpec)):
            entries = task.get(section) or {}
            if not isinstance(entries, Mapping):
                problems.append(f"`{section}` must map dataset names to entries")
                entries = {}
            parsed = {}
            for key, entry in entries.items():
                if entry is None:  # a mixture switches a dataset off with `name: null`
                    continue
                spec = _entry(spec_cls, f"{section}.{key}", entry, problems)
                if spec is not None:
                    parsed[str(key)] = spec
            sections[section] = parsed
        max_steps = task.get("max_steps")
        if max_steps is not None and not (_is_int(max_steps) and max_steps >= 0):
            problems.append(
                f"max_steps: {max_steps!r} is not a step count; write a whole number >= 0"
            )
        prepare = task.get("prepare")
        if prepare is not None and not (isinstance(prepare, Mapping) and "_target_" in prepare):
            problems.append("prepare: must be a mapping with a `_target_` to call")
        if problems:
            raise TaskConfigError(problems, name)
        return cls(
            name=name,
            train=sections["train"],
            eval=sections["eval"],
            max_steps=max_steps,
            track=task.get("track"),
            prepare=dict(prepare) if prepare is not None else None,
        )

    def eval_dicts(self) -> dict[str, dict[str, Any]]:
        """Each test set as a plain dict with every default filled in."""
        return {name: dataclasses.asdict(spec) for name, spec in self.eval.items()}


# What makes a test set the test set it is: the clips, how their labels are read, the question
# asked and how answers are scored. Batch size, weight, chance level and track are not.
IDENTITY_KEYS = ("shards", "label_key", "label_join", "prompt", "metric", "metric_args")


def test_set_id(spec: Mapping[str, Any], data_dir: str | os.PathLike | None = None) -> str:
    """12 hex digits naming a test set's identity, so two sets that share a name are told apart.

    Shards inside the data cache (``data_dir``) are named from the cache, not from the disk:
    the same generated suite read from ``./xares_data`` or from ``$XARES_DATA_HOME`` elsewhere
    is the same test set, and runs that scored it can be compared.
    """
    identity = {k: spec.get(k) for k in IDENTITY_KEYS}
    if data_dir is not None and identity["shards"]:
        identity["shards"] = [_in_cache(str(s), data_dir) for s in identity["shards"]]
    return fingerprint(identity, 12)


def _in_cache(shard: str, data_dir: str | os.PathLike) -> str:
    """``<data>/...`` for a shard pattern inside the data cache; any other one as written."""
    if "://" in shard:
        return shard
    home = os.path.abspath(os.path.expanduser(data_dir))
    path = os.path.abspath(os.path.expanduser(shard))
    if os.path.commonpath([home, path]) != home:
        return shard
    return "<data>/" + Path(os.path.relpath(path, home)).as_posix()


def eval_defaults() -> dict[str, Any]:
    """The value a test set gets for each optional key it leaves out."""
    out = {}
    for f in dataclasses.fields(EvalSpec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unknown_keys(
    entry: Mapping[str, Any], spec_cls: type, where: str, problems: list[str], ignore=frozenset()
) -> None:
    valid = [f.name for f in dataclasses.fields(spec_cls)]
    for key in entry:
        if key in valid or key in ignore:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        problems.append(
            f"{where}: unknown key `{key}`{hint}; valid keys: {', '.join(sorted(valid))}"
        )


def _entry(spec_cls: type, where: str, entry: Any, problems: list[str]):
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: must be a mapping of settings, not {type(entry).__name__}")
        return None
    before = len(problems)
    _unknown_keys(entry, spec_cls, where, problems)
    values = {k: v for k, v in entry.items() if k in {f.name for f in dataclasses.fields(spec_cls)}}

    shards = values.get("shards")
    if isinstance(shards, str):
        shards = [shards]
    if not shards or not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
        problems.append(f"{where}: `shards` must be a path, glob, URL or a list of them")
    else:
        values["shards"] = list(shards)
    for key in ("prompt", "label_key"):
        value = values.get(key)
        if (key == "prompt" or value is not None) and not (
            isinstance(value, str) and value.strip()
        ):
            problems.append(f"{where}: `{key}` must be a non-empty string")
    for key in ("repo_id", "label_join", "track"):
        if values.get(key) is not None and not isinstance(values[key], str):
            problems.append(f"{where}: `{key}` must be a string")

    if spec_cls is TrainSpec:
        prob = values.get("prob")
        if prob is not None and not (_is_number(prob) and prob >= 0):
            problems.append(
                f"{where}: prob {prob!r} must be a number >= 0 (a relative sampling weight), "
                "or null for the dataset's share of shards"
            )
    else:
        if "metric" in values and not (isinstance(values["metric"], str) and values["metric"]):
            problems.append(f"{where}: `metric` must name a metric (e.g. Accuracy)")
        args = values.get("metric_args")
        if args is None:
            values.pop("metric_args", None)
        elif not isinstance(args, Mapping):
            problems.append(f"{where}: `metric_args` must be a mapping (write {{}} for none)")
        else:
            values["metric_args"] = dict(args)
        batch = values.get("batch_size")
        if batch is not None and not (_is_int(batch) and batch > 0):
            problems.append(f"{where}: batch_size {batch!r} must be a whole number >= 1")
        weight = values.get("weight")
        if weight is not None and not (_is_number(weight) and weight >= 0):
            problems.append(f"{where}: weight {weight!r} must be a number >= 0")
        chance = values.get("chance")
        if chance is not None and not _is_number(chance):
            problems.append(f"{where}: chance {chance!r} must be a number or null")
    if len(problems) > before:
        return None
    for key in ("label_key", "metric", "batch_size", "weight"):
        if key in values and values[key] is None:
            values.pop(key)  # null: the default
    return spec_cls(**values)
