"""Caption metrics: FENSE and DATE via the optional ``mecat`` package, and offline TokenF1."""

from __future__ import annotations

import inspect
import math
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from xares.metrics.base import Metric, MetricUnavailableError
from xares.metrics.normalise import normalise_text


class TokenF1(Metric):
    """Mean over pairs of the bag-of-words F1 between normalised prediction and reference.

    Tokens are whitespace-separated words of the normalised text, matched as multisets.
    Both empty scores 1.0; exactly one empty scores 0.0.
    """

    name = "TokenF1"

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        return float(self.pair_values(predictions, references).mean())

    def pair_values(self, predictions: list[Any], references: list[Any]) -> np.ndarray:
        return np.array(
            [
                token_f1(normalise_text(pred).split(), normalise_text(ref).split())
                for pred, ref in zip(predictions, references)
            ],
            dtype=np.float64,
        )


def token_f1(predicted: list[str], reference: list[str]) -> float:
    """F1 of the multiset overlap between two token lists."""
    if not predicted or not reference:
        return float(not predicted and not reference)
    overlap = sum((Counter(predicted) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


MECAT_REQUIREMENT = "mecat==1.1.0"
INSTALL_HINT = (
    'install the caption extra (`pip install -e ".[caption]"`, which pins '
    f"{MECAT_REQUIREMENT}); mecat downloads its models (a Sentence-BERT encoder and the FENSE "
    "error detector) on first use, so the first run needs network access"
)


class _MecatMetric(Metric):
    """Scores with ``mecat.evaluate`` on the caption task, one pair per reference.

    The score is mecat's as computed (FENSE can fall below 0); it is not clipped, so that it
    equals the challenge's. ``mecat`` (1.1.0 or newer, for its ``reference_data`` argument)
    and its models are optional; without them the metric raises
    :class:`MetricUnavailableError` so that the evaluator can skip the task. ``scorer``
    replaces ``mecat.evaluate`` (same keyword arguments, same result table).

    mecat's score is the mean of one score per pair (for DATE, each pair's score weighs its
    similarity against how it ranks among the whole set's references). Those per-pair scores
    come from mecat's own scorer (``corpus_score(..., agg_score="none")``), or from
    ``pair_scorer(predictions, references)`` when given; they are what a bootstrap interval
    resamples (DATE's ranks stay those of the full test set).
    """

    mecat_metric: ClassVar[str] = ""
    keep_pair_scores: ClassVar[bool] = True
    # With explicit references mecat scores the "long" caption subtask, reported as this row.
    result_row: ClassVar[str] = "content_long"

    def __init__(
        self,
        batch_size: int = 32,
        device: str | None = None,
        scorer: Callable[..., Any] | None = None,
        pair_scorer: Callable[[list[str], list[str]], Any] | None = None,
        **metric_args: Any,
    ):
        super().__init__(batch_size=batch_size, device=device, **metric_args)
        self.batch_size = batch_size
        self.device = device
        self.scorer = scorer
        self.pair_scorer = pair_scorer

    def _unavailable(self, reason: str) -> MetricUnavailableError:
        return MetricUnavailableError(
            f"{self.name} is unavailable: {reason}. To score it, {INSTALL_HINT}."
        )

    def load_evaluate(self) -> Callable[..., Any]:
        """``mecat.evaluate`` (or the given scorer); MetricUnavailableError if it cannot run."""
        if self.scorer is not None:
            return self.scorer
        try:
            from mecat import evaluate
        except ImportError as exc:
            raise self._unavailable(f"cannot import mecat ({exc})") from exc
        if not _accepts(evaluate, "reference_data"):
            version = getattr(sys.modules.get("mecat"), "__version__", "unknown")
            raise self._unavailable(
                f"mecat {version} cannot score against given references (needs 1.1.0 or newer)"
            )
        return evaluate

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        evaluate = self.load_evaluate()
        try:
            table = evaluate(
                predicted_data=[[normalise_text(p)] for p in predictions],
                reference_data=[[normalise_text(r)] for r in references],
                task="caption",
                metrics=[self.mecat_metric],
                subtask="long",
                batch_size=self.batch_size,
                device=self.device,
            )
        # Missing models surface as OSError (no network, missing cache) or ImportError.
        except (OSError, ImportError) as exc:
            raise self._unavailable(f"mecat could not load its models ({exc})") from exc
        return self.read_score(table)

    def pair_values(self, predictions: list[Any], references: list[Any]) -> np.ndarray:
        predictions = [normalise_text(p) for p in predictions]
        references = [normalise_text(r) for r in references]
        score_pairs = self.pair_scorer or self._mecat_pair_scorer()
        try:
            values = np.asarray(score_pairs(predictions, references), dtype=np.float64)
        except (OSError, ImportError) as exc:
            raise self._unavailable(f"mecat could not load its models ({exc})") from exc
        if values.shape != (len(references),):
            raise RuntimeError(
                f"{self.name}: the per-pair scorer gave {values.shape} scores for "
                f"{len(references)} pairs"
            )
        return values

    def _mecat_pair_scorer(self) -> Callable[[list[str], list[str]], Any]:
        try:
            from mecat.scorer import BaseScorer
        except ImportError as exc:
            raise self._unavailable(f"cannot import mecat ({exc})") from exc
        scorer = BaseScorer(
            metrics=[self.mecat_metric], batch_size=self.batch_size, device=self.device
        )
        model = getattr(scorer, f"{self.mecat_metric}_scorer")

        def score_pairs(predictions: list[str], references: list[str]) -> Any:
            return model.corpus_score(
                predictions, [[r] for r in references], agg_score="none", group_name=self.result_row
            )

        return score_pairs

    def read_score(self, table: Any) -> float:
        """Pick this metric's score from mecat's results (a DataFrame or a list of row dicts)."""
        records = table.to_dict(orient="records") if hasattr(table, "to_dict") else list(table)
        row = next((r for r in records if r.get("subtask") == self.result_row), None)
        if row is None or row.get(self.mecat_metric) is None:
            raise RuntimeError(
                f"{self.name}: mecat returned no '{self.mecat_metric}' score for "
                f"'{self.result_row}'; rows: {records}"
            )
        score = float(row[self.mecat_metric])
        if math.isnan(score):
            raise RuntimeError(f"{self.name}: mecat returned NaN for '{self.result_row}'")
        return score


def _accepts(function: Callable[..., Any], argument: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in parameters)


class FENSE(_MecatMetric):
    """FENSE (Sentence-BERT similarity with a fluency-error penalty), via ``mecat``."""

    name = "FENSE"
    mecat_metric = "fense"


class DATE(_MecatMetric):
    """DATE (discriminability-aware caption score used by MECAT), via ``mecat``."""

    name = "DATE"
    mecat_metric = "date"
