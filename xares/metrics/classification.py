"""Classification metrics on generated label text: Accuracy and multi-label mAP."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from xares.metrics.base import Metric, PairStatistics, check_pairs
from xares.metrics.normalise import normalise_text


class Accuracy(Metric):
    """Fraction of pairs whose normalised prediction equals the normalised reference."""

    name = "Accuracy"

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        return float(self.pair_values(predictions, references).mean())

    def pair_values(self, predictions: list[Any], references: list[Any]) -> np.ndarray:
        return np.array(
            [normalise_text(p) == normalise_text(r) for p, r in zip(predictions, references)],
            dtype=np.float64,
        )


def split_labels(text: Any, separator: str = ";", lenient: bool = False) -> list[str]:
    """The labels of a multi-label string, as the challenge reads them.

    The text is normalised with its punctuation kept and split on ``separator`` exactly as
    written: ``"dog; cat"`` gives ``"dog"`` and ``" cat"``, and ``"dog;"`` gives an empty
    label. ``lenient`` instead strips punctuation and spaces from each label and drops the
    empty ones, so that ``"Dog ; cat."`` reads as ``dog`` and ``cat``.
    """
    parts = normalise_text(text, keep_punctuation=True).split(separator)
    if not lenient:
        return parts
    return [label for label in map(normalise_text, parts) if label]


class mAP(Metric):
    """Macro average precision of multi-label answers over ``num_classes`` label columns.

    Labels come from :func:`split_labels`. Each distinct reference label gets a column;
    predicted labels that no reference uses are ignored. Predictions are hard 0/1 scores,
    so a class that is never predicted scores its prevalence (scikit-learn's AP), and a
    column no reference uses scores 0 and still counts in the mean, as in the challenge's
    scoring: a subset of a test set scores what the same answers score within the whole
    label set. Without ``num_classes`` the columns are the labels seen in the references.
    ``lenient_labels=True`` forgives spacing and punctuation inside the answer (not the
    challenge's scoring, so scores are not comparable with the leaderboard).
    """

    name = "mAP"

    def __init__(
        self,
        num_classes: int | None = None,
        separator: str = ";",
        lenient_labels: bool = False,
        **metric_args: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            separator=separator,
            lenient_labels=lenient_labels,
            **metric_args,
        )
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"mAP: num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.separator = separator
        self.lenient_labels = bool(lenient_labels)

    def labels(self, text: Any) -> list[str]:
        return split_labels(text, self.separator, self.lenient_labels)

    def indicators(
        self, predictions: list[Any], references: list[Any]
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The reference labels (one per column, in column order; any further columns up to
        ``num_classes`` have none) and the 0/1 reference and answer matrices, a row per pair."""
        ref_labels = [self.labels(r) for r in references]
        classes = sorted(set().union(*ref_labels))
        if not classes:
            raise ValueError("mAP: the references contain no labels")
        width = len(classes) if self.num_classes is None else self.num_classes
        if len(classes) > width:
            raise ValueError(
                f"mAP: the references use {len(classes)} distinct labels but num_classes is "
                f"{width} (first labels: {classes[:5]}); check the eval set's label_key, the "
                "label separator and metric_args.num_classes in the task file"
            )
        index = {label: i for i, label in enumerate(classes)}
        y_true = np.zeros((len(references), width), dtype=np.float32)
        y_pred = np.zeros((len(predictions), width), dtype=np.float32)
        for row, (prediction, labels) in enumerate(zip(predictions, ref_labels)):
            y_true[row, [index[label] for label in labels]] = 1
            y_pred[row, [index[lb] for lb in self.labels(prediction) if lb in index]] = 1
        return classes, y_true, y_pred

    @staticmethod
    def average_precisions(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """The AP of each column; their mean is the score."""
        # Deferred: scikit-learn takes about a second to import and only mAP needs it.
        from sklearn.metrics import average_precision_score

        with warnings.catch_warnings():
            # A column without positives is expected (num_classes > labels seen); it scores 0.
            warnings.simplefilter("ignore", UserWarning)
            if y_true.shape[1] == 1:
                # One column would be read as a binary target, not a one-class indicator.
                return np.array([average_precision_score(y_true[:, 0], y_pred[:, 0])])
            return np.asarray(average_precision_score(y_true, y_pred, average=None))

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        _, y_true, y_pred = self.indicators(predictions, references)
        return float(np.mean(self.average_precisions(y_true, y_pred)))

    def statistics(self, predictions: Any, references: Any) -> PairStatistics:
        """Per pair and class: answered and right, answered, in the reference; and a count.

        With 0/1 answers, scikit-learn's average precision of a class is ``R·P + (1 − R)·π``
        (recall R and precision P of the answers, prevalence π: the curve has the answers'
        point and the all-positive one), the prevalence when the class is never answered, and
        0 when no reference has it; :func:`binary_average_precision` computes exactly that.
        """
        from scipy import sparse

        predictions, references = check_pairs(self.name, predictions, references)
        _, y_true, y_pred = self.indicators(predictions, references)
        rows = np.concatenate(
            [y_true * y_pred, y_pred, y_true, np.ones((len(y_true), 1), dtype=np.float32)], axis=1
        )
        width = y_true.shape[1]
        return PairStatistics(
            sparse.csr_matrix(rows.astype(np.float64)),
            lambda sums: binary_average_precision(sums, width).mean(axis=-1),
        )


def binary_average_precision(sums: np.ndarray, width: int) -> np.ndarray:
    """Average precision per class (``(..., width)``) from summed :meth:`mAP.statistics` rows."""
    hits, answered, positives = (sums[..., i * width : (i + 1) * width] for i in range(3))
    total = sums[..., 3 * width : 3 * width + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        prevalence = np.where(total > 0, positives / total, 0.0)
        recall = np.where(positives > 0, hits / positives, 0.0)
        precision = np.where(answered > 0, hits / answered, 0.0)
    ap = recall * precision + (1.0 - recall) * prevalence
    return np.where(positives > 0, ap, 0.0)
