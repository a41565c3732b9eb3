"""Shared metric interface: input checks and the error raised for unavailable metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class MetricUnavailableError(RuntimeError):
    """A metric cannot run here (missing optional package or model files)."""


class Metric:
    """Base class: ``metric(predictions, references) -> float`` in [0, 1], higher is better.

    Inputs are flat, aligned lists of strings (one pair per reference). Subclasses implement
    :meth:`compute`; ``__call__`` validates the inputs first.
    """

    name: ClassVar[str] = ""

    def __init__(self, **metric_args: Any) -> None:
        # Task configs may carry arguments that only some metrics use; keep them for logging.
        self.metric_args = dict(metric_args)

    def __call__(self, predictions: Sequence[Any], references: Sequence[Any]) -> float:
        predictions, references = check_pairs(self.name, predictions, references)
        return float(self.compute(predictions, references))

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.metric_args.items())
        return f"{type(self).__name__}({args})"


def check_pairs(
    name: str, predictions: Sequence[Any], references: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """Return both inputs as lists; raise if they are not aligned, non-empty sequences."""
    for what, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name}: {what} must be a list of strings, not a single string")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"{name}: got {len(predictions)} predictions but {len(references)} references"
        )
    if not predictions:
        raise ValueError(f"{name}: no predictions to score")
    return predictions, references
