"""Per-class diagnosis of classification test sets and the per-run page (report.html)."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from helpers.browser import needs_chromium, screenshot

from xares.metrics.classification import Accuracy, mAP
from xares.results import cli, diagnosis, run_page, scores


def rows_of(pairs, references_per_clip=None):
    """Rows as the test loop keeps them, from (reference, prediction) pairs."""
    return [
        {
            "key": f"k{i:02d}",
            "prompt": "Which class?",
            "prediction": prediction,
            "references": reference if isinstance(reference, list) else [reference],
        }
        for i, (reference, prediction) in enumerate(pairs)
    ]


ACCURACY_ROWS = rows_of(
    [
        ("Dog", "dog"),
        ("dog", "Cat."),
        ("dog", ""),
        ("cat", "cat"),
        ("cat", "It is a cat!"),
        ("bird", "dog"),
        ("bird", "dog"),
        ("bird", "airplane"),
        ("cat", "catalog"),  # "cat" inside a word is not the label
    ]
)
MAP_ROWS = rows_of(
    [
        ("dog;cat", "dog;cat"),
        ("dog", "dog; cat"),  # " cat" is not a label in the challenge's scoring
        ("bird", ""),
        ("cat;fish", "fish;unicorn"),
        ("bird", "dog"),
        ("fish", "a purple elephant"),
    ]
)


def test_accuracy_per_class_confusions_and_validity():
    block = diagnosis.diagnose(ACCURACY_ROWS, "Accuracy")
    assert block["labels"] == 3
    assert block["per_class"] == {
        "bird": {"n": 3, "correct": 0, "accuracy": 0.0, "answered": 0},
        "cat": {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3, abs=1e-6), "answered": 2},
        "dog": {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3, abs=1e-6), "answered": 3},
    }
    assert block["confusions"][0] == {"reference": "bird", "answer": "dog", "count": 2}
    assert [(c["reference"], c["answer"], c["count"]) for c in block["confusions"][1:]] == [
        ("bird", "airplane", 1),
        ("cat", "catalog", 1),
        ("cat", "it is a cat", 1),
        ("dog", "", 1),
        ("dog", "cat", 1),
    ]
    validity = block["validity"]
    assert (validity["answers"], validity["valid"], validity["empty"]) == (9, 5, 1)
    assert (validity["label_with_other_words"], validity["other"]) == (1, 2)
    assert validity["shares"]["other"] == pytest.approx(2 / 9, abs=1e-6)
    assert {e["answer"] for e in validity["invalid_examples"]} == {
        "It is a cat!",
        "airplane",
        "catalog",
    }
    # The per-class numbers add up to the set's score.
    predictions = [r["prediction"] for r in ACCURACY_ROWS]
    references = [r["references"][0] for r in ACCURACY_ROWS]
    correct = sum(c["correct"] for c in block["per_class"].values())
    assert correct / 9 == Accuracy()(predictions, references)


def test_a_clip_with_several_references_is_one_answer_and_one_pair_per_reference():
    block = diagnosis.diagnose(rows_of([(["dog", "hound"], "dog")]), "Accuracy")
    assert block["per_class"]["dog"]["correct"] == 1 and block["per_class"]["hound"]["n"] == 1
    assert block["confusions"] == [{"reference": "hound", "answer": "dog", "count": 1}]
    assert block["validity"]["answers"] == 1 and block["validity"]["valid"] == 1


def test_map_per_class_ap_averages_to_the_metric():
    args = {"num_classes": 5}
    block = diagnosis.diagnose(MAP_ROWS, "mAP", args)
    ap = {label: c["ap"] for label, c in block["per_class"].items()}
    # Hard 0/1 answers: a never-answered class scores its prevalence.
    assert ap == pytest.approx({"bird": 1 / 3, "cat": 2 / 3, "dog": 2 / 3, "fish": 2 / 3}, abs=1e-6)
    assert (block["columns"], block["absent_columns"], block["metric_args"]) == (5, 1, args)
    predictions = [r["prediction"] for r in MAP_ROWS]
    references = [r["references"][0] for r in MAP_ROWS]
    score = mAP(**args)(predictions, references)
    assert score == pytest.approx(7 / 15)
    assert np.mean([*ap.values(), *[0.0] * block["absent_columns"]]) == pytest.approx(score)
    assert block["per_class"]["dog"] == {"n": 2, "answered": 3, "correct": 2, "ap": ap["dog"]}
    assert block["confusions"] == [
        {"reference": "bird", "answer": "dog", "count": 1},
        {"reference": "cat", "answer": "unicorn", "count": 1},
        {"reference": "fish", "answer": "a purple elephant", "count": 1},
    ]
    validity = block["validity"]
    assert [validity[k] for k in diagnosis.VALIDITY] == [2, 1, 2, 1]


def test_lenient_map_reads_answers_as_its_metric_does():
    block = diagnosis.diagnose(MAP_ROWS[:2], "mAP", {"lenient_labels": True})
    assert block["validity"]["valid"] == 2 and block["per_class"]["cat"]["answered"] == 2


def test_only_scored_classification_sets_get_a_diagnosis():
    results = [
        {"task": "eval_a", "metric": "Accuracy", "score": 0.2, "rows": ACCURACY_ROWS},
        {"task": "eval_b", "metric": "iWER", "score": 0.5, "rows": ACCURACY_ROWS},
        {"task": "eval_c", "metric": "mAP", "score": float("nan"), "rows": []},
        {"task": "eval_d", "metric": "mAP", "score": 0.4, "rows": MAP_ROWS},
    ]
    summary = {"tasks": [{"task": r["task"], "metric": r["metric"]} for r in results]}
    sets = {"eval_d": {"metric_args": {"num_classes": 7}}}
    diagnosis.attach(summary, results, sets)
    assert [("diagnosis" in t) for t in summary["tasks"]] == [True, False, False, True]
    assert summary["tasks"][3]["diagnosis"]["columns"] == 7
    json.dumps(summary["tasks"], allow_nan=False)  # JSON-safe


def result(task, metric, rows, score, **extra):
    return {
        "task": task,
        "metric": metric,
        "score": score,
        "weight": 1.0,
        "chance": None,
        "track": "task1",
        "set_id": "x",
        "clips": len(rows),
        "dropped": {},
        "note": "",
        "rows": rows,
        **extra,
    }


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as a run writes it: score files with the diagnosis, then the page."""
    many = rows_of([(f"class {i}", f"class {i % 40}") for i in range(60)])
    results = [
        result("eval_pets", "Accuracy", ACCURACY_ROWS, 2 / 9),
        result("eval_events", "mAP", MAP_ROWS, 7 / 15),
        result("eval_many", "Accuracy", many, 40 / 60),
        result("eval_words", "iWER", rows_of([("a b", "a")]), 0.5),
    ]
    summary = scores.summarise(results)
    summary["tasks"][0]["interval"] = [0.05, 0.44]
    summary["overall_interval"] = [0.2, 0.6]
    summary["comparability"] = {
        "comparable": False,
        "against": "the challenge",
        "reasons": [{"code": "task", "text": "task <mini> is not a challenge task"}],
    }
    sets = {"eval_events": {"metric_args": {"num_classes": 5}}}
    diagnosis.attach(summary, results, sets)
    out = tmp_path / "run"
    scores.write_reports(out, results, run_name="mel__mini", summary=summary)
    run_page.write_run_page(out)
    return out


def test_the_run_page_shows_every_classification_set(run_dir):
    html = (run_dir / "report.html").read_text()
    stored = json.loads((run_dir / "scores.json").read_text())
    assert "diagnosis" in stored["tasks"][0] and "diagnosis" not in stored["tasks"][3]
    for name in ("set-eval_pets", "set-eval_events", "set-eval_many"):
        assert f'id="{name}"' in html
    assert 'id="set-eval_words"' not in html
    # The confusion matrix of pets and the AP bars of events; no picture of 60 classes.
    assert html.count('src="data:image/png;base64,') == 2
    assert "no picture: more than 50 classes" in html
    assert "[0.0500, 0.4400]" in html and "[0.2000, 0.6000]" in html
    assert "task &lt;mini&gt; is not a challenge task" in html  # escaped
    assert "It is a cat!" in html and "unicorn" in html
    assert "http://" not in html and "https://" not in html  # offline: nothing to fetch


def test_the_run_page_heads_its_intervals_with_their_level(run_dir):
    path = run_dir / "scores.json"
    summary = json.loads(path.read_text())
    summary["intervals"] = {"resamples": 1000, "level": 0.9, "seed": 0}
    path.write_text(json.dumps(summary))
    run_page.write_run_page(run_dir)
    assert "<th>90% CI</th>" in (run_dir / "report.html").read_text()


def test_the_run_page_of_an_older_run_is_made_from_its_predictions(run_dir):
    path = run_dir / "scores.json"
    summary = json.loads(path.read_text())
    for task in summary["tasks"]:
        task.pop("diagnosis", None)
    path.write_text(json.dumps(summary))
    (run_dir / "report.html").unlink()
    (run_dir / "predictions_eval_many.csv").unlink()
    assert cli.main(["--run-pages", str(run_dir.parent)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "computed from predictions_eval_pets.csv" in html
    assert "no diagnosis and no predictions_eval_many.csv" in html
    assert html.count('src="data:image/png;base64,') == 2
    rows = scores.read_predictions(run_dir / "predictions_eval_pets.csv")
    assert diagnosis.diagnose(rows, "Accuracy") == diagnosis.diagnose(ACCURACY_ROWS, "Accuracy")


@needs_chromium
def test_the_run_page_renders_in_a_headless_browser(run_dir, tmp_path):
    pixels = screenshot(run_dir / "report.html", tmp_path / "page.png", "1300,2400")
    # The embedded confusion matrix is drawn: bird -> dog, 2 of 3, in its colour map's blue.
    blue = np.array(matplotlib.colormaps["Blues"](2 / 3)[:3])
    assert np.all(np.abs(pixels - blue) < 3 / 255, axis=-1).sum() > 200
    # The verdict box, in its own colour.
    box = np.array([0xFF, 0xF1, 0xE5]) / 255
    assert np.all(np.abs(pixels - box) < 1.5 / 255, axis=-1).sum() > 1000
