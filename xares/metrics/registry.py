"""Metric lookup by the names task configs use, plus plug-in registration."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from xares.metrics.asr import iCER, iWER
from xares.metrics.base import Metric, MetricUnavailableError
from xares.metrics.caption import DATE, FENSE, TokenF1
from xares.metrics.classification import Accuracy, mAP

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "MetricUnavailableError",
    "UnknownMetricError",
    "build_metric",
    "register_metric",
]

METRICS: dict[str, type] = {
    cls.name: cls for cls in (Accuracy, mAP, iWER, iCER, FENSE, DATE, TokenF1)
}


class UnknownMetricError(ValueError, KeyError):
    """No metric is registered under the requested name and it is no importable path."""

    # KeyError would print the message as a quoted repr.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_metric(cls: type) -> type:
    """Class decorator: make ``cls`` available to :func:`build_metric` as ``cls.name``."""
    name = getattr(cls, "name", "") or cls.__name__
    previous = METRICS.get(name)
    if previous is not None and previous is not cls:
        logger.warning("metric %r: %s replaces %s", name, _qualname(cls), _qualname(previous))
    METRICS[name] = cls
    return cls


def build_metric(name: str, metric_args: Mapping[str, Any] | None = None) -> Metric:
    """Instantiate the metric registered as ``name``, or the class at dotted path ``name``."""
    cls = METRICS.get(name) or _import_metric(name)
    return cls(**dict(metric_args or {}))


def _import_metric(path: str) -> type:
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    known = ", ".join(sorted(METRICS))
    if not module_name:
        raise UnknownMetricError(
            f"unknown metric {path!r}; known: {known} (or a dotted path 'pkg.module.Class')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownMetricError(
            f"unknown metric {path!r}: cannot import module {module_name!r} ({exc}); known: {known}"
        ) from exc
    cls = getattr(module, attr, None)
    if not callable(cls):
        raise UnknownMetricError(
            f"unknown metric {path!r}: module {module_name!r} has no class {attr!r}; known: {known}"
        )
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
