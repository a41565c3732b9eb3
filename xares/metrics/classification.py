"""Classification metrics on generated label text: Accuracy and multi-label mAP."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from xares.metrics.base import Metric
from xares.metrics.normalise import normalise_text

logger = logging.getLogger(__name__)


class Accuracy(Metric):
    """Fraction of pairs whose normalised prediction equals the normalised reference."""

    name = "Accuracy"

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        hits = sum(normalise_text(p) == normalise_text(r) for p, r in zip(predictions, references))
        return hits / len(references)


def split_labels(text: Any, separator: str = ";") -> set[str]:
    """Normalised, non-empty labels of a multi-label string such as ``"Dog; Cat"``."""
    labels = (normalise_text(part) for part in normalise_text(text, True).split(separator))
    return {label for label in labels if label}


class mAP(Metric):
    """Macro average precision of multi-label predictions over the test label set.

    Labels are ``separator``-split and normalised. The classes are the labels seen in the
    references; predicted labels outside that set are ignored. Predictions are hard 0/1
    scores, so a class that is never predicted scores its prevalence (sklearn's AP).
    ``num_classes`` is the protocol's class count, used only to flag a label-set mismatch.
    """

    name = "mAP"

    def __init__(
        self, num_classes: int | None = None, separator: str = ";", **metric_args: Any
    ) -> None:
        super().__init__(num_classes=num_classes, separator=separator, **metric_args)
        self.num_classes = num_classes
        self.separator = separator

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        # Deferred: scikit-learn takes about a second to import and only mAP needs it.
        from sklearn.metrics import average_precision_score

        ref_sets = [split_labels(r, self.separator) for r in references]
        classes = sorted(set().union(*ref_sets))
        if not classes:
            raise ValueError("mAP: the references contain no labels")
        if self.num_classes is not None and len(classes) > self.num_classes:
            logger.warning(
                "mAP: references use %d distinct labels but num_classes is %d; "
                "check the label key and the label separator",
                len(classes),
                self.num_classes,
            )
        index = {label: i for i, label in enumerate(classes)}
        y_true = np.zeros((len(references), len(classes)), dtype=np.int8)
        y_pred = np.zeros((len(predictions), len(classes)), dtype=np.float32)
        for row, (pred, ref_set) in enumerate(zip(predictions, ref_sets)):
            y_true[row, [index[label] for label in ref_set]] = 1
            y_pred[row, [index[lb] for lb in split_labels(pred, self.separator) if lb in index]] = 1
        if len(classes) == 1:
            # A single column would be read as a binary target, not a one-class indicator.
            return float(average_precision_score(y_true[:, 0], y_pred[:, 0]))
        # Every column has a positive by construction, so no class is silently dropped.
        return float(average_precision_score(y_true, y_pred, average="macro"))
