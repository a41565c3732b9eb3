"""Tests for xares.metrics: hand-computed scores, edge cases and the registry."""

from __future__ import annotations

import sys
import types

import pytest

from xares.metrics import (
    DATE,
    FENSE,
    METRICS,
    Accuracy,
    MetricUnavailableError,
    TokenF1,
    build_metric,
    iCER,
    iWER,
    mAP,
    normalise_text,
    register_metric,
)
from xares.metrics.base import Metric
from xares.metrics.registry import UnknownMetricError

# --- normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Dog   BARKING! ", "dog barking"),
        ("Hi-Hat", "hi hat"),
        ("ｆｕｌｌ－ｗｉｄｔｈ", "full width"),  # NFKC folds full-width letters and hyphen
        ("it's a dog.", "its a dog"),
        ("a\tb\nc", "a b c"),
        ("你好，世界。", "你好世界。"),  # NFKC makes the comma ASCII; "。" is not ASCII
        (3, "3"),
        (1.5, "15"),
        (None, ""),
    ],
)
def test_normalise_text(raw, expected):
    assert normalise_text(raw) == expected


def test_normalise_text_keep_punctuation_keeps_the_spacing_around_separators():
    # Only the punctuation step is skipped: runs of spaces collapse, the ends are stripped,
    # and the space after a `;` stays, as the challenge scores multi-label answers.
    assert normalise_text(" Dog ;  Cat_meow ; Hi-Hat ", keep_punctuation=True) == (
        "dog ; cat_meow ; hi hat"
    )


# --- input checks ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Accuracy, mAP, iWER, iCER, TokenF1, FENSE, DATE])
def test_length_mismatch_and_empty_input(cls):
    metric = cls()
    with pytest.raises(ValueError, match=f"{cls.name}: got 2 predictions but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions to score"):
        metric([], [])


def test_single_string_input_is_rejected():
    with pytest.raises(TypeError, match="list of strings"):
        Accuracy()("dog", "dog")


# --- classification --------------------------------------------------------------------


def test_accuracy_ignores_case_punctuation_and_hyphens():
    predictions = ["Dog.", "hi-hat", "  CAT ", "bird", 7]
    references = ["dog", "Hi Hat", "cat", "frog", "7"]
    assert Accuracy()(predictions, references) == pytest.approx(4 / 5)


def test_accuracy_accepts_and_keeps_extra_args():
    metric = Accuracy(num_classes=10)
    assert metric(["yes"], ["Yes!"]) == 1.0
    assert metric.metric_args == {"num_classes": 10}


def test_map_hand_computed():
    # Classes come from the references: bird, cat, dog (num_classes 3: no empty column).
    # With hard 0/1 predictions,
    # sklearn's AP is R1 * P1 + (1 - R1) * prevalence, where P1, R1 are precision and
    # recall of the predicted positives.
    #   dog:  true [1,1,0,0], pred [1,1,0,0] -> P1=1,   R1=1 -> AP 1.0
    #   cat:  true [1,0,0,1], never predicted            -> AP = prevalence 2/4 = 0.5
    #   bird: true [0,0,1,0], pred [0,1,1,0] -> P1=1/2, R1=1 -> AP 0.5
    # "car" is not a reference label and is ignored. mAP = (1 + 0.5 + 0.5) / 3 = 2/3.
    predictions = ["Dog", "dog;Bird", "bird", "car"]
    references = ["dog;cat", "dog", "bird", "cat"]
    assert mAP(num_classes=3)(predictions, references) == pytest.approx(2 / 3)


def test_map_perfect_predictions_in_any_order_and_case():
    references = ["dog;cat", "bird", "cat;Hi-Hat", "dog"]
    predictions = ["Cat;DOG", "BIRD", "hi hat;cat", "dog"]
    assert mAP()(predictions, references) == pytest.approx(1.0)


def test_map_lenient_labels_forgive_spacing_and_punctuation():
    references = ["dog;cat", "bird", "cat;Hi-Hat", "dog"]
    predictions = ["Cat ; DOG", "bird.", "hi hat; cat", "dog"]
    assert mAP(lenient_labels=True)(predictions, references) == pytest.approx(1.0)
    # The challenge's reading: "cat ", " dog", "bird." and " cat" are no reference label.
    # Columns bird, cat, dog, hi hat: bird and cat are never predicted (AP = prevalence,
    # 1/4 and 2/4); dog only on row 4 (P1 = 1, R1 = 1/2: 1/2 + 1/2 * 2/4 = 3/4); hi hat
    # on row 3 (1.0). Mean (1/4 + 2/4 + 3/4 + 1) / 4 = 5/8.
    assert mAP()(predictions, references) == pytest.approx(5 / 8)


def test_map_ignores_unknown_predicted_labels():
    references = ["dog", "cat"]
    assert mAP()(["dog;unicorn", "cat;dragon"], references) == pytest.approx(1.0)
    assert mAP()(["unicorn", "dragon"], references) == pytest.approx(0.5)


def test_map_single_class():
    # dog: true [1,1], pred [0,1] -> P1=1, R1=1/2 -> AP 1/2 + 1/2 * 1 = 1.0
    assert mAP()(["cat", "dog"], ["dog", "dog"]) == pytest.approx(1.0)


def test_map_rejects_more_labels_than_num_classes():
    with pytest.raises(ValueError, match="2 distinct labels but num_classes is 1.*label_key"):
        mAP(num_classes=1)(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="positive integer"):
        mAP(num_classes=0)


def test_map_without_reference_labels_raises():
    with pytest.raises(ValueError, match="no labels"):
        mAP(lenient_labels=True)(["dog"], [" ; "])


# --- transcription ---------------------------------------------------------------------


def test_iwer_one_substitution_in_four_words():
    assert iWER()(["the cat sat down"], ["The dog sat down."]) == pytest.approx(0.75)


def test_iwer_is_corpus_level():
    # 1 substitution over 4 words + 1 deletion over 2 words = 2 errors / 6 words.
    predictions = ["the cat sat down", "hello"]
    references = ["the dog sat down", "hello world"]
    assert iWER()(predictions, references) == pytest.approx(1 - 2 / 6)


def test_iwer_empty_prediction_is_all_deletions():
    assert iWER()([""], ["a b c d"]) == 0.0
    assert iWER()(["", "a b"], ["a b", "a b"]) == pytest.approx(0.5)


def test_iwer_empty_reference():
    assert iWER()([""], [""]) == 1.0
    assert iWER()(["..."], ["!"]) == 1.0  # both empty after normalisation
    assert iWER()(["noise"], [""]) == 0.0
    # Insertions from the empty-reference pair add to the corpus errors: 2 / 4 words.
    assert iWER()(["a b c d", "uh um"], ["a b c d", ""]) == pytest.approx(0.5)


def test_iwer_is_floored_at_zero():
    # 1 substitution + 3 insertions over 1 reference word: WER 4.
    assert iWER()(["a b c d"], ["x"]) == 0.0


def test_icer_counts_characters_including_spaces():
    # "ab c" vs "abd c": one inserted character over 4 reference characters.
    assert iCER()(["abd c"], ["AB C"]) == pytest.approx(0.75)


def test_icer_chinese():
    # One substituted character out of four.
    assert iCER()(["今天天汽"], ["今天天气"]) == pytest.approx(0.75)


def test_icer_empty_cases():
    assert iCER()([""], ["abcd"]) == 0.0
    assert iCER()([""], [""]) == 1.0
    assert iCER()(["ab"], [""]) == 0.0
    # 2 inserted characters against 4 reference characters.
    assert iCER()(["abcd", "ab"], ["abcd", ""]) == pytest.approx(0.5)
    assert iCER()(["abcdefghij"], ["ab"]) == 0.0


# --- captions --------------------------------------------------------------------------


def test_token_f1_values():
    metric = TokenF1()
    assert metric(["A dog barks."], ["a dog barks"]) == 1.0
    # overlap {a, dog} = 2; P = 2/3, R = 2/4, F1 = 2 * (1/3) / (7/6) = 4/7.
    assert metric(["a dog barks"], ["a dog is howling"]) == pytest.approx(4 / 7)
    # Multisets: "dog dog" vs "dog" overlap 1; P = 1/2, R = 1, F1 = 2/3.
    assert metric(["dog dog"], ["dog"]) == pytest.approx(2 / 3)
    assert metric(["cat"], ["dog"]) == 0.0
    assert metric([""], ["!"]) == 1.0
    assert metric([""], ["dog"]) == 0.0
    assert metric(["dog"], [""]) == 0.0
    assert metric(["a dog barks", "cat"], ["a dog barks", "dog"]) == pytest.approx(0.5)


@pytest.fixture
def no_mecat(monkeypatch):
    # A None entry in sys.modules makes `import mecat` raise ImportError.
    monkeypatch.setitem(sys.modules, "mecat", None)


@pytest.mark.parametrize("cls", [FENSE, DATE])
def test_mecat_metrics_unavailable_without_mecat(no_mecat, cls):
    with pytest.raises(MetricUnavailableError, match=rf"{cls.name}.*\[caption\].*mecat==1\.1\.0"):
        cls()(["a dog barks"], ["a dog is barking"])


@pytest.mark.parametrize("cls", [FENSE, DATE])
def test_mecat_metrics_unavailable_when_models_cannot_load(monkeypatch, cls):
    def evaluate(**kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setitem(sys.modules, "mecat", types.SimpleNamespace(evaluate=evaluate))
    with pytest.raises(MetricUnavailableError, match="could not load its models"):
        cls()(["a dog barks"], ["a dog is barking"])


@pytest.mark.parametrize(("cls", "column"), [(FENSE, "fense"), (DATE, "date")])
def test_mecat_adapter_passes_pairs_and_reads_score(monkeypatch, cls, column):
    calls = {}

    def evaluate(**kwargs):
        calls.update(kwargs)
        # mecat returns a DataFrame; its rows as dicts are enough for the adapter.
        return [{"subtask": "content_long", "num_samples": 2, column: 0.42}]

    monkeypatch.setitem(sys.modules, "mecat", types.SimpleNamespace(evaluate=evaluate))
    score = cls(device="cpu")(["A dog barks.", "rain"], ["a dog is barking", "Heavy rain"])
    assert score == pytest.approx(0.42)
    assert calls["predicted_data"] == [["a dog barks"], ["rain"]]
    assert calls["reference_data"] == [["a dog is barking"], ["heavy rain"]]
    assert calls["metrics"] == [column]
    assert calls["task"] == "caption"
    assert calls["device"] == "cpu"


def test_mecat_adapter_reports_missing_score():
    with pytest.raises(RuntimeError, match="no 'fense' score"):
        FENSE().read_score([{"subtask": "content_short", "fense": 0.5}])


# --- registry --------------------------------------------------------------------------


def test_registry_has_protocol_metrics():
    expected = {"Accuracy", "mAP", "iWER", "iCER", "FENSE", "DATE", "TokenF1"}
    assert expected <= set(METRICS)
    for name in expected:
        assert METRICS[name].name == name


def test_build_metric_passes_args():
    metric = build_metric("mAP", {"num_classes": 200})
    assert isinstance(metric, mAP)
    assert metric.num_classes == 200
    assert isinstance(build_metric("Accuracy"), Accuracy)
    assert isinstance(build_metric("iWER", {}), iWER)


def test_unknown_metric_lists_known_names():
    with pytest.raises(ValueError, match="unknown metric 'BLEU'; known: .*Accuracy.*iWER"):
        build_metric("BLEU")
    with pytest.raises(KeyError):
        build_metric("BLEU")


def test_unknown_dotted_path():
    with pytest.raises(UnknownMetricError, match="cannot import module 'no_such_pkg'"):
        build_metric("no_such_pkg.Metric")
    with pytest.raises(UnknownMetricError, match="has no class 'Nope'"):
        build_metric("xares.metrics.caption.Nope")


class ExactLength(Metric):
    """Test plug-in: fraction of pairs with the same character length."""

    name = "ExactLength"

    def __init__(self, offset: int = 0, **metric_args):
        super().__init__(offset=offset, **metric_args)
        self.offset = offset

    def compute(self, predictions, references):
        hits = sum(len(p) + self.offset == len(r) for p, r in zip(predictions, references))
        return hits / len(references)


def test_dotted_path_metric():
    metric = build_metric(f"{__name__}.ExactLength", {"offset": 1})
    assert isinstance(metric, ExactLength)
    assert metric(["ab", "abc"], ["abc", "abc"]) == 0.5
    assert isinstance(build_metric("xares.metrics.caption.TokenF1"), TokenF1)


def test_register_metric(monkeypatch):
    monkeypatch.setattr("xares.metrics.registry.METRICS", dict(METRICS))

    @register_metric
    class AlwaysOne(Metric):
        name = "AlwaysOne"

        def compute(self, predictions, references):
            return 1.0

    metric = build_metric("AlwaysOne")
    assert isinstance(metric, AlwaysOne)
    assert metric(["x"], ["y"]) == 1.0
    assert "AlwaysOne" not in METRICS


@pytest.mark.parametrize("cls", [FENSE, DATE])
def test_mecat_before_1_1_is_reported_as_unavailable(monkeypatch, cls):
    # mecat 1.0.x reads references only from its own packaged files.
    def evaluate(predicted_data, metrics=None, task="caption", subtask=None, batch_size=32):
        raise AssertionError("must not be called")

    module = types.SimpleNamespace(evaluate=evaluate, __version__="1.0.4")
    monkeypatch.setitem(sys.modules, "mecat", module)
    with pytest.raises(MetricUnavailableError, match=r"mecat 1\.0\.4 .*needs 1\.1\.0"):
        cls()(["a dog barks"], ["a dog is barking"])
