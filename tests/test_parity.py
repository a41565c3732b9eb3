"""Scores identical to the challenge's: each case worked out by hand from the reference.

The reference is the XARES-LLM evaluation code (github.com/xiaomi-research/xares-llm,
``src/xares_llm/metrics.py``). Its scorers first apply ``preprocess_string`` (NFKC,
lower-case, ``-`` to space, ASCII punctuation removed, whitespace collapsed), except for
multi-label answers, whose punctuation is kept; then:

- ``Accuracy.__call__``: scikit-learn's ``accuracy_score`` (exact match);
- ``mAP.__call__`` -> ``average_precision_score_with_string``: labels split on ``;`` as
  written, a 0/1 matrix of ``num_classes`` columns indexed by the labels seen in the
  references (predicted labels outside them ignored), scikit-learn's macro
  ``average_precision_score``;
- ``iWER.__call__`` / ``iCER.__call__``: ``max(0, 1 - jiwer.wer/cer)`` over all pairs;
- ``FENSE`` / ``DATE``: ``mecat.evaluate(predicted_data=[[p]...], reference_data=[[r]...])``,
  the score as mecat returns it (no clipping).

With hard 0/1 predictions, one column's AP is ``R1 * P1 + (1 - R1) * prevalence``, where
``P1``/``R1`` are the precision/recall of the rows predicted positive; a column never
predicted scores its prevalence, a column with no positive scores 0.
"""

from __future__ import annotations

import re

import pytest
import yaml
from helpers.config import ROOT

from xares.metrics import DATE, FENSE, build_metric
from xares.metrics.caption import MECAT_REQUIREMENT

CASES = [
    # --- Accuracy: metrics.py, Accuracy.__call__ (preprocess_string + accuracy_score) ------
    ("Accuracy", {}, ["Dog.", "cat"], ["dog", "Cat"], 1.0),  # punctuation and case
    ("Accuracy", {}, ["hi-hat"], ["Hi Hat"], 1.0),  # hyphen -> space
    ("Accuracy", {}, ["a   b "], ["a b"], 1.0),  # whitespace collapsed and stripped
    ("Accuracy", {}, ["ｄｏｇ"], ["dog"], 1.0),  # NFKC folds full-width letters
    ("Accuracy", {}, ["dog", "cat", "cow", "ant"], ["dog", "dog", "cow", "bee"], 2 / 4),
    ("Accuracy", {}, [""], ["!"], 1.0),  # both empty once punctuation is gone
    ("Accuracy", {}, ["it's"], ["its"], 1.0),  # the apostrophe is punctuation
    # --- mAP: metrics.py, mAP.__call__ -> average_precision_score_with_string ------------
    # a: true [1,0,0,1] pred [1,0,0,1] -> 1; b: true [0,1,0,0] pred [0,1,0,0] -> 1;
    # c: never predicted -> prevalence 1/4. Columns 4 and 5 have no positive -> 0.
    # (1 + 1 + 1/4) / 5 = 0.45.
    ("mAP", {"num_classes": 5}, ["a", "b", "x", "a"], ["a", "b", "c", "a"], 0.45),
    # Without num_classes the columns are the three labels seen: 2.25 / 3.
    ("mAP", {}, ["a", "b", "x", "a"], ["a", "b", "c", "a"], 0.75),
    # "dog; cat" splits into "dog" and " cat"; " cat" is no label. dog: 1;
    # cat: true [1,0,1], pred [0,0,1] -> P1 1, R1 1/2 -> 1/2 + 1/2 * 2/3 = 5/6. Mean 11/12.
    ("mAP", {"num_classes": 2}, ["dog; cat", "dog", "cat"], ["dog;cat", "dog", "cat"], 11 / 12),
    # Punctuation inside a label is kept: "walk footsteps" is not "walk, footsteps".
    # "walk, footsteps": true [1,0,1], pred [0,0,1] -> 5/6; rain: 1. Mean 11/12.
    (
        "mAP",
        {"num_classes": 2},
        ["walk footsteps", "rain", "walk, footsteps"],
        ["walk, footsteps", "rain", "walk, footsteps"],
        11 / 12,
    ),
    # lenient_labels (not the challenge's scoring) forgives both.
    (
        "mAP",
        {"num_classes": 2, "lenient_labels": True},
        ["dog; cat", "dog", "cat"],
        ["dog;cat", "dog", "cat"],
        1.0,
    ),
    (
        "mAP",
        {"num_classes": 2, "lenient_labels": True},
        ["walk footsteps", "rain", "walk, footsteps"],
        ["walk, footsteps", "rain", "walk, footsteps"],
        1.0,
    ),
    # "dog;" has an empty second label, a class of its own: true [1,0], never predicted
    # -> prevalence 1/2; dog -> 1. Mean 3/4.
    ("mAP", {"num_classes": 2}, ["dog", "dog"], ["dog;", "dog"], 0.75),
    # An unknown predicted label is ignored. a: 1; b: never predicted -> 1/2. Mean 3/4.
    ("mAP", {"num_classes": 2}, ["a;z", "z"], ["a", "b"], 0.75),
    # Case and hyphens are normalised inside labels. hi hat: 1; snare: prevalence 1 -> 1.
    ("mAP", {"num_classes": 2}, ["hi hat;SNARE", "kick"], ["Hi-Hat;Snare", "Snare"], 1.0),
    # FSDKaggle2018's 41 columns: bark true [1,0] pred [1,1] -> P1 1/2, R1 1 -> 1/2;
    # meow never predicted -> 1/2. (1/2 + 1/2) / 41.
    ("mAP", {"num_classes": 41}, ["Bark", "Bark"], ["Bark", "Meow"], 1 / 41),
    # --- iWER: metrics.py, iWER.__call__ (max(0, 1 - jiwer.wer)) -------------------------
    ("iWER", {}, ["the cat sat"], ["the cat sat on"], 1 - 1 / 4),  # one deletion
    # Corpus level: one substitution over 2 + 4 reference words.
    ("iWER", {}, ["a b", "c d e f"], ["a x", "c d e f"], 1 - 1 / 6),
    ("iWER", {}, ["Hello, World!"], ["hello world"], 1.0),
    # One substitution and four insertions against one word: WER 5, floored at 0.
    ("iWER", {}, ["a b c d e"], ["x"], 0.0),
    # An empty reference adds its prediction's words as insertions: 1 / 2.
    ("iWER", {}, ["x", "a b"], ["", "a b"], 0.5),
    ("iWER", {}, [""], ["a b c d"], 0.0),  # all deletions
    # --- iCER: metrics.py, iCER.__call__ (max(0, 1 - jiwer.cer)) -------------------------
    ("iCER", {}, ["abd"], ["abc"], 1 - 1 / 3),
    ("iCER", {}, ["我们在北京"], ["我们在南京"], 1 - 1 / 5),
    ("iCER", {}, ["ab c"], ["abc"], 1 - 1 / 3),  # the space is an inserted character
    ("iCER", {}, ["x y"], ["x-y"], 1.0),  # the hyphen becomes a space first
]


@pytest.mark.parametrize(("metric", "args", "predictions", "references", "expected"), CASES)
def test_metric_matches_the_reference(metric, args, predictions, references, expected):
    assert build_metric(metric, args)(predictions, references) == pytest.approx(expected, abs=1e-9)


def test_every_challenge_metric_has_parity_cases():
    """Each metric a challenge test set is scored with has hand-computed cases here."""
    protocol = yaml.safe_load(
        (ROOT / "xares" / "protocol" / "xares_llm_protocol.yaml").read_text(encoding="utf-8")
    )
    used = set(re.findall(r"'metric': '(\w+)'", repr(protocol)))
    assert used >= {"Accuracy", "mAP", "iWER", "iCER", "FENSE", "DATE"}
    covered = {case[0] for case in CASES} | {case[0].__name__ for case in MECAT_CASES}
    assert sorted(used - covered) == []


# --- FENSE / DATE: metrics.py, FENSE and DATE via mecat.evaluate ----------------------------


class Table:
    """What mecat.evaluate returns (a pandas DataFrame), as far as the wrapper reads it."""

    def __init__(self, rows):
        self.rows = rows

    def to_dict(self, orient):
        assert orient == "records"
        return self.rows


def stand_in(column: str):
    """mecat 1.1.0's ``evaluate`` signature; a pair scores 1 when equal, else -0.5."""
    calls = []

    def evaluate(
        predicted_data,
        metrics=None,
        task="caption",
        subtask=None,
        level=None,
        reference_dir=None,
        reference_data=None,
        batch_size=32,
        device=None,
        output_dir=None,
        save_details=False,
    ):
        calls.append({"predicted_data": predicted_data, "reference_data": reference_data})
        assert task == "caption" and metrics == [column] and subtask == "long"
        scores = [1.0 if p == r else -0.5 for (p,), (r,) in zip(predicted_data, reference_data)]
        row = {"subtask": "content_long", "num_samples": len(scores)}
        return Table([{**row, column: sum(scores) / len(scores)}])

    evaluate.calls = calls
    return evaluate


MECAT_CASES = [
    # Normalised as preprocess_string does before mecat sees them: 1 and -0.5 -> 0.25.
    (FENSE, "fense", ["A dog barks.", "Rain!"], ["a dog barks", "wind"], 0.25),
    # Below zero stays below zero: the reference does not clip.
    (FENSE, "fense", ["x"], ["y"], -0.5),
    # One pair per reference (a clip's prediction repeated for each of its captions).
    (DATE, "date", ["loud rain", "loud rain", "Hi-hat"], ["loud rain", "rain", "hi hat"], 0.5),
]


@pytest.mark.parametrize(("cls", "column", "predictions", "references", "expected"), MECAT_CASES)
def test_caption_metric_matches_the_reference(cls, column, predictions, references, expected):
    scorer = stand_in(column)
    assert cls(scorer=scorer)(predictions, references) == pytest.approx(expected)
    (call,) = scorer.calls
    assert len(call["predicted_data"]) == len(call["reference_data"]) == len(references)
    assert all(
        len(p) == len(r) == 1 for p, r in zip(call["predicted_data"], call["reference_data"])
    )


def test_caption_extra_pins_the_mecat_the_wrappers_need():
    # tomllib is Python 3.11+; the extra is one line of pyproject.toml.
    extra = re.search(r"^caption = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert extra and extra.group(1) == f'"{MECAT_REQUIREMENT}"'
    assert re.fullmatch(r"mecat==1\.1\.\d+", MECAT_REQUIREMENT)
