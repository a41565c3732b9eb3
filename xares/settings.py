"""Typed settings from a config section: every field named, nothing assumed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_section(cls: type[T], section: str, values: Mapping[str, Any]) -> T:
    """``cls`` (a dataclass) from the config section ``section``; a key the section lacks or one
    ``cls`` does not know is named, with the valid ones. The values are the config's alone: the
    dataclasses carry types and checks, never a default that could stand in for a missing key."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names), key=str)
    missing = [name for name in names if name not in values]
    if unknown or missing:
        raise ValueError(
            f"{section}: unknown setting(s) {unknown}, missing {missing}; valid: {names}"
        )
    return cls(**{name: values[name] for name in names})
