"""Per-class diagnosis of the classification test sets (``Accuracy`` and ``mAP``).

One number per test set hides which classes fail, what they are mistaken for, and how
often a generated answer is no label at all. :func:`diagnose` works from a set's rows
(key, prompt, prediction, references; see ``AudioLLMModule._score``) and reads answers and
labels exactly as the set's metric does: :func:`~xares.metrics.normalise.normalise_text`
for Accuracy, the metric's own label splitting for mAP. It returns a compact, JSON-safe block
that :func:`attach` puts under each classification task of ``scores.json`` as ``diagnosis``:

- ``per_class``, keyed by reference label: Accuracy sets give ``n`` (scored pairs whose
  reference is that label), ``correct``, ``accuracy`` and ``answered`` (pairs answered with
  it); mAP sets give ``n`` (pairs with the label), ``answered``, ``correct`` and ``ap``, from
  the same 0/1 matrices over ``num_classes`` columns the score is computed from, so the mean
  of the APs, with ``absent_columns`` zeros for columns no reference uses, is the score.
- ``confusions``: the most frequent (reference label, answer) mistakes, with counts. For
  Accuracy the answer is the normalised answer text (a label or not); for mAP each reference
  label an answer missed is paired with each label it gave that the references do not have.
- ``validity``, per generated answer (clip): ``valid`` (exactly one of the set's labels; for
  mAP every label of the answer is one), ``empty``, ``label_with_other_words`` (a label
  appears, as whole words, among other words) and ``other``, with their ``shares`` and the
  most frequent invalid answers. The set's labels are the distinct normalised reference
  labels of the test set itself: the answers a model was trained to give for this data, and
  the columns of its confusion matrix.

Pairs are what the metric scores (one per reference of a clip); with one reference per
clip, as in every challenge classification set, pairs are clips.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xares.metrics.classification import mAP
from xares.metrics.normalise import normalise_text
from xares.metrics.registry import build_metric

CLASSIFICATION_METRICS = ("Accuracy", "mAP")
TOP_CONFUSIONS = 10
TOP_INVALID = 5
# Answers quoted in the block are cut: a rambling answer would bloat scores.json.
MAX_ANSWER_CHARS = 60
VALIDITY = ("valid", "empty", "label_with_other_words", "other")
DIGITS = 6


def _quote(text: str) -> str:
    return text if len(text) <= MAX_ANSWER_CHARS else text[: MAX_ANSWER_CHARS - 1] + "…"


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, DIGITS) if whole else None


def _pairs(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Predictions and references as the metric scores them: one pair per reference."""
    predictions = [r["prediction"] for r in rows for _ in r["references"]]
    references = [ref for r in rows for ref in r["references"]]
    return predictions, references


def _kind(pieces: Sequence[str], valid: bool, labels: Sequence[str]) -> str:
    """How an answer stands to the set's labels. ``pieces``: its normalised text (the labels it
    gives, for mAP), searched for a label as whole words."""
    if not any(pieces):
        return "empty"
    if valid:
        return "valid"
    padded = [f" {piece} " for piece in pieces]
    if any(label and f" {label} " in piece for label in labels for piece in padded):
        return "label_with_other_words"
    return "other"


def _validity(answers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``answers``: (kind from :func:`_kind`, answer as written) per clip."""
    counts = Counter(kind for kind, _ in answers)
    invalid = Counter(_quote(shown) for kind, shown in answers if kind not in ("valid", "empty"))
    total = len(answers)
    return {
        "answers": total,
        **{kind: counts[kind] for kind in VALIDITY},
        "shares": {kind: _ratio(counts[kind], total) for kind in VALIDITY},
        "invalid_examples": [
            {"answer": answer, "count": n}
            for answer, n in sorted(invalid.items(), key=lambda item: (-item[1], item[0]))[
                :TOP_INVALID
            ]
        ],
    }


def _top(pairs: Counter, top: int) -> list[dict[str, Any]]:
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"reference": ref, "answer": answer, "count": n} for (ref, answer), n in ranked]


def answer_pairs(rows: Sequence[Mapping[str, Any]]) -> Counter:
    """How often each (normalised reference, normalised answer) pair occurs in an Accuracy set."""
    predictions, references = _pairs(rows)
    return Counter((normalise_text(r), normalise_text(p)) for p, r in zip(predictions, references))


def confusion_matrix(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], np.ndarray]:
    """The reference labels (sorted) and an Accuracy set's confusion counts: a row per
    reference label, a column per label answered and a last column for answers that are no
    label."""
    pairs = answer_pairs(rows)
    labels = sorted({ref for ref, _ in pairs})
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    for (ref, answer), n in pairs.items():
        matrix[index[ref], index.get(answer, len(labels))] += n
    return labels, matrix


def _accuracy(rows: Sequence[Mapping[str, Any]], top: int) -> dict[str, Any]:
    pairs = answer_pairs(rows)
    labels = sorted({ref for ref, _ in pairs})
    support: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for (ref, answer), n in pairs.items():
        support[ref] += n
        answered[answer] += n
        if ref == answer:
            correct[ref] += n
    label_set = set(labels)
    answers = []
    for row in rows:
        text = normalise_text(row["prediction"])
        answers.append((_kind([text], text in label_set, labels), str(row["prediction"] or "")))
    return {
        "metric": "Accuracy",
        "labels": len(labels),
        "per_class": {
            label: {
                "n": support[label],
                "correct": correct[label],
                "accuracy": _ratio(correct[label], support[label]),
                "answered": answered[label],
            }
            for label in labels
        },
        "confusions": _top(
            Counter({(r, _quote(a)): n for (r, a), n in pairs.items() if r != a}), top
        ),
        "validity": _validity(answers),
    }


def _map(rows: Sequence[Mapping[str, Any]], metric: mAP, top: int) -> dict[str, Any]:
    predictions, references = _pairs(rows)
    classes, y_true, y_pred = metric.indicators(predictions, references)
    ap = metric.average_precisions(y_true, y_pred)
    seen = len(classes)
    hits = (y_true * y_pred)[:, :seen]
    label_set = set(classes)
    confusions: Counter[tuple[str, str]] = Counter()
    for prediction, reference in zip(predictions, references):
        given = {label for label in metric.labels(prediction) if normalise_text(label)}
        wanted = set(metric.labels(reference))
        for missed in sorted(wanted - given):
            for extra in sorted(given - wanted):
                confusions[(missed, _quote(extra))] += 1
    words = [normalise_text(c) for c in classes]
    answers = []
    for row in rows:
        labels = metric.labels(row["prediction"])
        valid = all(label in label_set for label in labels)
        pieces = [normalise_text(label) for label in labels]
        answers.append((_kind(pieces, valid, words), str(row["prediction"] or "")))
    return {
        "metric": "mAP",
        "labels": seen,
        "columns": int(y_true.shape[1]),
        # Columns no reference uses: each scores an AP of 0 in the mean.
        "absent_columns": int(y_true.shape[1]) - seen,
        "per_class": {
            label: {
                "n": int(y_true[:, i].sum()),
                "answered": int(y_pred[:, i].sum()),
                "correct": int(hits[:, i].sum()),
                "ap": round(float(ap[i]), DIGITS),
            }
            for i, label in enumerate(classes)
        },
        "confusions": _top(confusions, top),
        "validity": _validity(answers),
    }


def diagnose(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    metric_args: Mapping[str, Any] | None = None,
    top: int = TOP_CONFUSIONS,
) -> dict[str, Any] | None:
    """The diagnosis block of one test set, or ``None`` when its metric is not a
    classification metric or it has no rows."""
    if metric not in CLASSIFICATION_METRICS or not rows:
        return None
    if metric == "Accuracy":
        return _accuracy(rows, top)
    scorer = build_metric(metric, metric_args)
    assert isinstance(scorer, mAP), f"{metric} is no mAP"
    return _map(rows, scorer, top) | {"metric_args": dict(metric_args or {})}


def attach(
    summary: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    eval_sets: Mapping[str, Mapping[str, Any]],
) -> None:
    """Put the diagnosis of every scored classification set under its task in ``summary``."""
    entries = {entry["task"]: entry for entry in summary["tasks"]}
    for result in results:
        if math.isnan(result["score"]):  # nothing was scored
            continue
        spec = eval_sets.get(result["task"]) or {}
        block = diagnose(result.get("rows") or [], result["metric"], spec.get("metric_args"))
        if block is not None:
            entries[result["task"]]["diagnosis"] = block
