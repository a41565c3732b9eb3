"""Bootstrap intervals over clips, and the resampling that paired comparisons share.

A test set's answers are reduced once to one row of numbers per clip (the sum of its pairs'
:class:`~xares.metrics.base.PairStatistics`): what the set's metric adds up. A bootstrap
replicate draws the set's clips with replacement, sums the rows it drew and combines them,
which recomputes the metric as it is defined on that resample: corpus-level WER and CER, mAP
over the task's ``num_classes`` columns, a mean of per-pair scores for FENSE and DATE.

A replicate resamples every test set at once, so a track's or the overall's replicate is the
weighted mean of its sets' replicates, and their intervals are as joint as their scores. The
interval is the percentile interval of the replicates (``level``, 95 % by default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from xares.metrics import MetricUnavailableError, build_metric
from xares.metrics.base import PairStatistics, mean_of

log = logging.getLogger(__name__)

METHOD = "percentile bootstrap over clips"


@dataclass(frozen=True)
class IntervalSettings:
    """How intervals are made: ``resamples`` replicates (0: none), ``level``, the RNG ``seed``."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or int(self.resamples) < 0:
            raise ValueError(
                f"intervals.resamples must be 0 (no intervals) or a positive number of "
                f"bootstrap replicates, got {self.resamples!r}"
            )
        if not 0.0 < float(self.level) < 1.0:
            raise ValueError(f"intervals.level must lie between 0 and 1, got {self.level!r}")

    @classmethod
    def of(cls, node: Mapping[str, Any] | None) -> IntervalSettings:
        return cls(**dict(node or {}))

    def block(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "resamples": int(self.resamples),
            "level": float(self.level),
            "seed": int(self.seed),
        }


@dataclass(frozen=True)
class SetStatistics:
    """One test set's answers as the rows its metric adds up: one row per clip, in ``keys``
    order."""

    task: str
    keys: tuple[str, ...]
    values: Any  # (clips, k): numpy or SciPy sparse
    combine: Any

    @property
    def clips(self) -> int:
        return len(self.keys)

    def score(self) -> float:
        return float(self.combine(_dense(self.values.sum(axis=0)).ravel()))

    def combine_counts(self, counts: np.ndarray) -> np.ndarray:
        """The score of each replicate: ``counts`` (replicates × clips) says how often each
        replicate drew each clip."""
        if sparse.issparse(self.values):
            sums = (self.values.T @ counts.T).T
        else:
            sums = counts @ self.values
        return np.asarray(self.combine(_dense(sums)), dtype=np.float64)


def _dense(value: Any) -> np.ndarray:
    return np.asarray(value.toarray() if sparse.issparse(value) else value, dtype=np.float64)


def pair_statistics(metric: Any, rows: Sequence[Mapping[str, Any]]) -> PairStatistics:
    """The statistics of ``rows`` (key, prediction, references; one pair per reference).

    Per-pair scores kept with the rows (``pair_scores``, written to the predictions file)
    are used as they are, so FENSE and DATE are not scored again.
    """
    if rows and all(r.get("pair_scores") is not None for r in rows):
        return mean_of([float(v) for r in rows for v in r["pair_scores"]])
    predictions = [r["prediction"] for r in rows for _ in r["references"]]
    references = [ref for r in rows for ref in r["references"]]
    return metric.statistics(predictions, references)


def keep_pair_scores(rows: Sequence[dict[str, Any]], stats: PairStatistics) -> None:
    """Store each pair's score with its row (``pair_scores``, one per reference), from
    statistics made by :func:`~xares.metrics.base.mean_of`."""
    values = iter(np.asarray(stats.values)[:, 0].tolist())
    for row in rows:
        row["pair_scores"] = [next(values) for _ in row["references"]]


def set_statistics(
    task: str,
    metric: Any,
    rows: Sequence[Mapping[str, Any]],
    stats: PairStatistics | None = None,
) -> SetStatistics:
    """The per-clip rows of one test set (``rows`` as the evaluation keeps them; ``stats``,
    their :func:`pair_statistics`, when already made)."""
    stats = stats if stats is not None else pair_statistics(metric, rows)
    counts = [len(r["references"]) for r in rows]
    pairs = sum(counts)
    owner = np.repeat(np.arange(len(rows)), counts)
    # Summing each clip's pairs: a clip is what a resample draws, never one of its references.
    to_clips = sparse.csr_matrix((np.ones(pairs), (owner, np.arange(pairs))), (len(rows), pairs))
    values = to_clips @ stats.values
    if not sparse.issparse(values):
        values = np.asarray(values, dtype=np.float64)
    return SetStatistics(task, tuple(r["key"] for r in rows), values, stats.combine)


# Replicates are drawn in chunks of at most this many draws, so that a test set of tens of
# thousands of clips never holds a (resamples × clips) matrix at once.
CHUNK_DRAWS = 4_000_000


def resample_counts(clips: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Chunks of bootstrap replicates: how often each replicate draws each of ``clips`` clips
    (rows of ``clips`` draws with replacement), ``resamples`` rows in all."""
    step = max(1, min(resamples, CHUNK_DRAWS // max(clips, 1)))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        drawn = rng.integers(0, clips, size=(rows, clips))
        drawn += np.arange(rows)[:, None] * clips
        yield np.bincount(drawn.ravel(), minlength=rows * clips).reshape(rows, clips)


def replicate_scores(
    sets: Sequence[SetStatistics], resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Bootstrap replicate scores of statistics over the same clips (two runs of one test
    set), every one resampled with the same draws: paired replicates."""
    clips = sets[0].clips
    parts: list[list[np.ndarray]] = [[np.zeros(0)] for _ in sets]
    for counts in resample_counts(clips, resamples, rng):
        for stats, part in zip(sets, parts):
            part.append(stats.combine_counts(counts))
    return [np.concatenate(part) for part in parts]


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def weighted_replicates(
    replicates: Mapping[str, np.ndarray], weights: Mapping[str, float]
) -> np.ndarray | None:
    """Per replicate, the weighted mean of the given sets' replicate scores."""
    names = [n for n in replicates if weights.get(n, 0) > 0]
    if not names:
        return None
    stacked = np.stack([replicates[n] for n in names])
    w = np.array([float(weights[n]) for n in names])[:, None]
    return (stacked * w).sum(axis=0) / w.sum()


def statistics_of_results(
    results: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, SetStatistics], dict[str, str]]:
    """The statistics of every scored test set, and why the others have none."""
    found: dict[str, SetStatistics] = {}
    missing: dict[str, str] = {}
    for result in results:
        name = result["task"]
        if result.get("score") is None or math.isnan(result["score"]):
            missing[name] = "not scored"
            continue
        try:
            metric = build_metric(result["metric"], result.get("metric_args") or {})
            rows = result.get("rows") or []
            stats = pair_statistics(metric, rows)
            if metric.keep_pair_scores:
                keep_pair_scores(rows, stats)
            found[name] = set_statistics(name, metric, rows, stats)
        except (NotImplementedError, MetricUnavailableError, ValueError) as error:
            missing[name] = str(error)
            log.warning("%s: no interval (%s)", name, error)
    return found, missing


def attach_intervals(
    summary: dict[str, Any],
    results: Sequence[Mapping[str, Any]],
    settings: IntervalSettings,
) -> dict[str, Any]:
    """Add the intervals to ``summary`` (from :func:`xares.results.scores.summarise`).

    Each task gets ``interval`` ``[low, high]`` (``None`` without one), the summary gets
    ``tracks_interval``, ``overall_interval`` and an ``intervals`` block saying how they were
    made and which sets have none. With ``settings.resamples == 0`` only the block is added.
    """
    block = settings.block()
    summary["intervals"] = block
    for task in summary["tasks"]:
        task["interval"] = None
    summary["tracks_interval"] = {}
    summary["overall_interval"] = None
    if not settings.resamples:
        return summary
    found, missing = statistics_of_results(results)
    block["unavailable"] = missing
    rng = np.random.default_rng(settings.seed)
    replicates = {
        name: replicate_scores([stats], settings.resamples, rng)[0]
        for name, stats in found.items()
        if stats.clips
    }
    for task in summary["tasks"]:
        if task["task"] in replicates:
            task["interval"] = _pair(percentile_interval(replicates[task["task"]], settings.level))
    weights = {t["task"]: float(t["weight"]) for t in summary["tasks"]}
    scored = {t["task"] for t in summary["tasks"] if t["task"] not in missing or t["task"] in found}
    scored -= {name for name, why in missing.items() if why == "not scored"}

    def joint_interval(members: set[str]) -> list[float] | None:
        # A mean with a scored set that has no replicates would be an interval of another mean.
        if not members or not members <= set(replicates):
            return None
        joint = weighted_replicates({n: replicates[n] for n in members}, weights)
        return None if joint is None else _pair(percentile_interval(joint, settings.level))

    for track in summary.get("tracks") or {}:
        members = {t["task"] for t in summary["tasks"] if t.get("track") == track} & scored
        summary["tracks_interval"][track] = joint_interval(members)
    summary["overall_interval"] = joint_interval(scored)
    return summary


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [interval[0], interval[1]]
