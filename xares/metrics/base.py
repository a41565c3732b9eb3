"""Shared metric interface: input checks and the error raised for unavailable metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


class MetricUnavailableError(RuntimeError):
    """A metric cannot run here (missing optional package or model files)."""


@dataclass(frozen=True)
class PairStatistics:
    """A metric's score taken apart: one row of numbers per scored pair, whose column sums
    give the score back through ``combine``.

    A corpus-level edit rate keeps (errors, reference units) per pair, a mean keeps
    (value, 1), mAP keeps per-class hit and miss counts. Summing the rows of a resample of
    clips and combining the sums recomputes the metric as it is defined on that resample,
    which is what a bootstrap interval needs. ``values`` is a dense array or, for wide rows
    (mAP's classes), a SciPy sparse matrix; ``combine`` maps sums of shape ``(..., k)`` to
    scores of shape ``(...)``.
    """

    values: Any
    combine: Callable[[np.ndarray], np.ndarray]


def mean_of(values: Any) -> PairStatistics:
    """The statistics of a score that is the mean of one value per pair."""
    values = np.asarray(values, dtype=np.float64)
    rows = np.stack([values, np.ones_like(values)], axis=1)
    return PairStatistics(rows, lambda sums: sums[..., 0] / sums[..., 1])


class Metric:
    """Base class: ``metric(predictions, references) -> float`` in [0, 1], higher is better.

    Inputs are flat, aligned lists of strings (one pair per reference). Subclasses implement
    :meth:`compute`; ``__call__`` validates the inputs first.
    """

    name: ClassVar[str] = ""
    # Whether the per-pair scores are costly enough to keep in the predictions file.
    keep_pair_scores: ClassVar[bool] = False

    def __init__(self, **metric_args: Any) -> None:
        # Task configs may carry arguments that only some metrics use; keep them for logging.
        self.metric_args = dict(metric_args)

    def __call__(self, predictions: Sequence[Any], references: Sequence[Any]) -> float:
        predictions, references = check_pairs(self.name, predictions, references)
        return float(self.compute(predictions, references))

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        raise NotImplementedError

    def statistics(self, predictions: Sequence[Any], references: Sequence[Any]) -> PairStatistics:
        """The score taken apart pair by pair (see :class:`PairStatistics`).

        The default serves a metric whose score is the mean of :meth:`pair_values`; a metric
        that is neither overrides this or raises ``NotImplementedError`` (no interval then).
        """
        predictions, references = check_pairs(self.name, predictions, references)
        values = self.pair_values(predictions, references)
        if values is None:
            raise NotImplementedError(f"{self.name} cannot be taken apart into pairs")
        return mean_of(values)

    def pair_values(self, predictions: list[Any], references: list[Any]) -> np.ndarray | None:
        """One value per pair whose mean is the score, for metrics that are such a mean."""
        return None

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
