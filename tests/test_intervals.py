"""Intervals and paired comparisons: each metric taken apart and put back exactly, bootstrap
replicates that recompute the metric as it is defined, a coverage simulation, McNemar and Holm
against the library, and ``xares.compare`` on run directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score

from xares.metrics import TokenF1, build_metric, iCER, iWER, mAP
from xares.results import compare, intervals, scores
from xares.results.intervals import (
    IntervalSettings,
    attach_intervals,
    percentile_interval,
    replicate_scores,
    resample_counts,
    set_statistics,
)

LABELS = ["dog", "cat", "bird", "car", "rain"]


def rows_of(predictions, references, prefix="k"):
    return [
        {"key": f"{prefix}{i:04d}", "prompt": "p", "prediction": p, "references": [r]}
        for i, (p, r) in enumerate(zip(predictions, references))
    ]


def random_tags(rng, n, low=0):
    return [";".join(sorted(set(rng.choice(LABELS, rng.integers(low, 3))))) for _ in range(n)]


@pytest.mark.parametrize("num_classes", [None, 5, 9])
def test_map_taken_apart_gives_scikit_learns_score_back(num_classes):
    rng = np.random.default_rng(num_classes or 0)
    refs, preds = random_tags(rng, 60, low=1), random_tags(rng, 60)
    preds[:5] = [""] * 5  # unanswered clips; "rain" may never be answered
    metric = mAP(num_classes=num_classes)
    stats = metric.statistics(preds, refs)
    assert stats.combine(np.asarray(stats.values.sum(axis=0)).ravel()) == pytest.approx(
        metric(preds, refs), abs=1e-12
    )
    # And against scikit-learn directly, columns without positives scoring 0.
    _, y_true, y_pred = metric.indicators(preds, refs)
    per_class = [
        average_precision_score(y_true[:, c], y_pred[:, c]) if y_true[:, c].any() else 0.0
        for c in range(y_true.shape[1])
    ]
    assert metric(preds, refs) == pytest.approx(np.mean(per_class), abs=1e-12)


@pytest.mark.parametrize("metric", [iWER(), iCER(), TokenF1()])
def test_edit_rates_and_means_taken_apart_give_the_score_back(metric):
    preds = ["a b c", "", "x y z w", "hello", "one two", "the cat sat"]
    refs = ["a c d", "q r", "x y", "", "one two", "a cat sat down"]
    stats = metric.statistics(preds, refs)
    assert stats.values.shape[0] == len(refs)
    assert float(stats.combine(stats.values.sum(axis=0))) == pytest.approx(metric(preds, refs))


def test_each_replicate_is_the_metric_recomputed_on_its_resample():
    """The brute-force bootstrap: draw the clips, score the drawn clips' pairs with the metric
    itself. The fast path must give the same number for every replicate."""
    rng = np.random.default_rng(3)
    cases = [
        ("mAP", {"num_classes": 6}, random_tags(rng, 30), random_tags(rng, 30, low=1)),
        (
            "iWER",
            {},
            ["a b", "c d e", "f", "", "g h i j"] * 4,
            ["a b", "c e", "f g", "x", "g h"] * 4,
        ),
        ("Accuracy", {}, list(rng.choice(LABELS, 25)), list(rng.choice(LABELS, 25))),
    ]
    for name, args, preds, refs in cases:
        metric = build_metric(name, args)
        rows = rows_of(preds, refs)
        rows[0]["references"] = [refs[0], refs[1]]  # a clip with two references, drawn whole
        stats = set_statistics("t", metric, rows)
        p_all = [r["prediction"] for r in rows for _ in r["references"]]
        r_all = [ref for row in rows for ref in row["references"]]
        assert stats.score() == pytest.approx(metric(p_all, r_all), abs=1e-12), name
        draws = np.random.default_rng(7)
        fast = replicate_scores([stats], 12, np.random.default_rng(7))[0]
        counts = next(resample_counts(len(rows), 12, draws))
        for replicate, row_counts in enumerate(counts):
            drawn = [row for row, n in zip(rows, row_counts) for _ in range(n)]
            p = [r["prediction"] for r in drawn for _ in r["references"]]
            r = [ref for row in drawn for ref in row["references"]]
            assert fast[replicate] == pytest.approx(metric(p, r), abs=1e-12), name


def test_a_hand_made_interval():
    # Every answer right: every replicate scores 1, the interval is the point.
    perfect = set_statistics("t", build_metric("Accuracy"), rows_of(["a"] * 10, ["a"] * 10))
    assert percentile_interval(
        replicate_scores([perfect], 200, np.random.default_rng(0))[0], 0.95
    ) == (1.0, 1.0)
    # Two clips, one right: replicates are 0, 0.5 or 1 with chances ¼, ½, ¼, so the 95 %
    # interval runs from 0 to 1 and the 40 % one (30th..70th percentile) is the point 0.5.
    half = set_statistics("t", build_metric("Accuracy"), rows_of(["a", "b"], ["a", "a"]))
    reps = replicate_scores([half], 4000, np.random.default_rng(0))[0]
    assert set(np.unique(reps)) == {0.0, 0.5, 1.0}
    assert np.mean(reps == 0.5) == pytest.approx(0.5, abs=0.03)
    assert percentile_interval(reps, 0.95) == (0.0, 1.0)
    assert percentile_interval(reps, 0.40) == (0.5, 0.5)


def test_the_95_percent_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    """1000 simulated test sets of 200 clips at accuracy 0.7, 1000 resamples each."""
    truth, sets, clips = 0.7, 1000, 200
    data, boot = np.random.default_rng(11), np.random.default_rng(12)
    metric = build_metric("Accuracy")
    covered = 0
    for _ in range(sets):
        hits = data.random(clips) < truth
        rows = rows_of(["a" if h else "b" for h in hits], ["a"] * clips)
        stats = set_statistics("t", metric, rows)
        low, high = percentile_interval(replicate_scores([stats], 1000, boot)[0], 0.95)
        covered += low <= truth <= high
    print(f"coverage of the 95% interval: {covered / sets:.3f}")
    assert 0.93 <= covered / sets <= 0.97


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_clips():
    rng = np.random.default_rng(5)
    a, b = rng.random(80) < 0.6, rng.random(80) < 0.75
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    expected = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert compare.mcnemar_p(a, b) == pytest.approx(expected)
    assert compare.mcnemar_p(a, a) == 1.0


def test_holm_matches_the_library_and_a_hand_computed_case():
    from statsmodels.stats.multitest import multipletests

    assert compare.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    values = [0.001, 0.2, 0.03, 0.04, 0.5]
    assert compare.holm(values) == pytest.approx(list(multipletests(values, method="holm")[1]))
    adjusted = compare.holm([0.01, float("nan"), 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])


# ----------------------------------------------------------------------------- run directories


def results_of(answers: dict[str, tuple[str, dict, list[str], list[str]]], track=None):
    out = []
    for name, (metric, args, preds, refs) in answers.items():
        rows = rows_of(preds, refs)
        out.append(
            {
                "task": name,
                "metric": metric,
                "metric_args": args,
                "weight": 1.0,
                "chance": None,
                "track": track(name) if track else None,
                "set_id": f"id-{name}",
                "clips": len(rows),
                "dropped": {},
                "rows": rows,
                "score": build_metric(metric, args)(preds, refs),
                "note": "",
            }
        )
    return out


def write_run(path, results, resamples=200):
    summary = scores.summarise(results)
    attach_intervals(summary, results, IntervalSettings(resamples=resamples))
    scores.write_reports(path, results, run_name=f"{path.name}__mini", summary=summary)
    return summary


def two_runs(tmp_path, skill_b=0.95, skill_a=0.55, clips=120):
    rng = np.random.default_rng(0)
    refs = list(rng.choice(LABELS, clips))
    words = [" ".join(rng.choice(["a", "b", "c", "d"], 4)) for _ in range(clips)]

    def answers(skill, seed):
        r = np.random.default_rng(seed)
        cls = [ref if r.random() < skill else str(r.choice(LABELS)) for ref in refs]
        asr = [w if r.random() < skill else "a" for w in words]
        return {
            "eval_kws": ("Accuracy", {}, cls, refs),
            "eval_asr": ("iWER", {}, asr, words),
        }

    track = {"eval_kws": "A", "eval_asr": "B"}.get
    a = write_run(tmp_path / "run_a", results_of(answers(skill_a, 1), track))
    b = write_run(tmp_path / "run_b", results_of(answers(skill_b, 2), track))
    return a, b


def test_scores_files_carry_the_intervals(tmp_path):
    a, _ = two_runs(tmp_path)
    for task in a["tasks"]:
        low, high = task["interval"]
        assert low <= task["score"] <= high and high - low > 0.01
    assert set(a["tracks_interval"]) == {"A", "B"}
    low, high = a["overall_interval"]
    assert low <= a["overall"] <= high
    saved = json.loads((tmp_path / "run_a" / "scores.json").read_text())
    assert saved["intervals"]["resamples"] == 200 and saved["intervals"]["unavailable"] == {}
    tsv = (tmp_path / "run_a" / "scores.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:5] == ["task", "metric", "score", "ci_low", "ci_high"]
    overall = tsv[-1].split("\t")
    assert float(overall[3]) == pytest.approx(low, abs=1e-4)
    table = scores.format_table(a)
    assert "95% CI" in table and f"[{low:.4f}, {high:.4f}]" in table


def test_intervals_off_and_unscored_sets(tmp_path):
    results = results_of({"eval_x": ("Accuracy", {}, ["a", "b"], ["a", "a"])})
    results.append({**results[0], "task": "eval_y", "score": float("nan"), "rows": []})
    summary = scores.summarise(results)
    attach_intervals(summary, results, IntervalSettings(resamples=50))
    assert summary["tasks"][1]["interval"] is None
    assert summary["intervals"]["unavailable"] == {"eval_y": "not scored"}
    assert summary["overall_interval"] is not None  # the partial overall's own sets
    off = scores.summarise(results)
    attach_intervals(off, results, IntervalSettings(resamples=0))
    assert off["overall_interval"] is None and "CI" not in scores.format_table(off)
    with pytest.raises(ValueError, match="resamples"):
        IntervalSettings(resamples=-1)


def test_pair_scores_are_kept_and_read_back(tmp_path):
    """FENSE and DATE keep each pair's score in the predictions file; the interval reads it."""
    values = {"good dog": 0.9, "a cat": 0.4}
    metric = build_metric("FENSE", {"pair_scorer": lambda p, r: [values.get(x, 0.1) for x in p]})
    rows = rows_of(["good dog", "a cat", "noise"], ["a dog", "a cat", "rain"])
    stats = set_statistics("t", metric, rows)
    assert stats.score() == pytest.approx((0.9 + 0.4 + 0.1) / 3)
    intervals.keep_pair_scores(rows, intervals.pair_statistics(metric, rows))
    result = {**results_of({"eval_cap": ("TokenF1", {}, ["x"], ["x"])})[0], "rows": rows}
    scores.write_reports(tmp_path, [result], summary=scores.summarise([result]))
    back = scores.read_predictions(tmp_path / "predictions_eval_cap.csv")
    assert [r["pair_scores"] for r in back] == [[0.9], [0.4], [0.1]]
    assert set_statistics("t", TokenF1(), back).score() == pytest.approx(stats.score())


def test_compare_finds_a_real_difference_and_no_difference_between_equals(tmp_path, capsys):
    two_runs(tmp_path)
    a = compare.load_run(tmp_path / "run_a")
    b = compare.load_run(tmp_path / "run_b")
    result = compare.compare(a, b, resamples=300, permutations=300)
    by_set = {s["task"]: s for s in result["sets"]}
    assert by_set["eval_kws"]["test"] == "exact McNemar"
    assert by_set["eval_asr"]["test"] == "paired permutation"
    for entry in result["sets"]:
        low, high = entry["interval"]
        assert entry["difference"] > 0.2 and low > 0 and entry["significant"]
        assert entry["p_holm"] >= entry["p"]
    assert [m["task"] for m in result["means"]] == ["mean A", "mean B", "overall"]
    same = compare.compare(a, compare.load_run(tmp_path / "run_a"), resamples=100, permutations=100)
    for entry in same["sets"] + same["means"]:
        assert entry["difference"] == 0 and entry["p"] == 1.0 and not entry["significant"]
    assert (
        compare.main(
            [
                str(tmp_path / "run_a"),
                str(tmp_path / "run_b"),
                "--out",
                str(tmp_path / "cmp"),
                "--resamples",
                "100",
                "--permutations",
                "100",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "eval_kws" in printed and "exact McNemar" in printed and "*" in printed
    written = json.loads((tmp_path / "cmp" / "run_a__vs__run_b.json").read_text())
    assert written["sets"][0]["task"] == "eval_kws"
    assert "| eval_asr |" in (tmp_path / "cmp" / "run_a__vs__run_b.md").read_text()


def test_two_equally_good_runs_are_rarely_told_apart(tmp_path):
    two_runs(tmp_path, skill_a=0.7, skill_b=0.7)
    result = compare.compare(
        compare.load_run(tmp_path / "run_a"), compare.load_run(tmp_path / "run_b")
    )
    assert not any(entry["significant"] for entry in result["sets"] + result["means"])


def test_a_run_paired_with_several_others_takes_each_set_apart_once(tmp_path, monkeypatch):
    # A leaderboard pairs each column's best with every other run: the per-clip statistics of
    # a run are made once, not once per pairing.
    two_runs(tmp_path)
    expected = compare.compare(
        compare.load_run(tmp_path / "run_a"),
        compare.load_run(tmp_path / "run_b"),
        resamples=50,
        permutations=50,
    )
    # B's answers in another clip order pair up as before.
    shuffled = tmp_path / "run_b" / "predictions_eval_kws.csv"
    header, *lines = shuffled.read_text().splitlines()
    shuffled.write_text("\n".join([header, *reversed(lines)]) + "\n")
    made = []
    real = compare.set_statistics
    monkeypatch.setattr(
        compare, "set_statistics", lambda task, *args: made.append(task) or real(task, *args)
    )
    a, b = compare.load_run(tmp_path / "run_a"), compare.load_run(tmp_path / "run_b")
    for _ in range(3):
        assert compare.compare(a, b, resamples=50, permutations=50) == expected
    assert sorted(made) == ["eval_asr", "eval_asr", "eval_kws", "eval_kws"]


def test_holm_collects_garbage_without_scanning_what_was_alive_before_it():
    import gc

    # statsmodels' Holm runs a full collection; with a leaderboard's answers in memory that
    # cost seconds per call, so the objects alive before it are frozen out of its sight.
    frozen_during: list[int] = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            frozen_during.append(gc.get_freeze_count())

    before = gc.get_freeze_count()
    gc.callbacks.append(watch)
    try:
        assert compare.holm([0.01, 0.02]) == pytest.approx([0.02, 0.02])
    finally:
        gc.callbacks.remove(watch)
    assert frozen_during and min(frozen_during) > before  # the full collection saw no old object
    assert gc.get_freeze_count() == before and gc.isenabled()


def test_compare_refuses_runs_that_scored_other_clips(tmp_path):
    two_runs(tmp_path)
    path = tmp_path / "run_b" / "predictions_eval_kws.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # three clips fewer
    with pytest.raises(
        compare.ComparisonError, match=r"eval_kws: the runs scored different clips \(120 vs 117"
    ):
        compare.check_pairable(
            compare.load_run(tmp_path / "run_a"), compare.load_run(tmp_path / "run_b")
        )
    with pytest.raises(SystemExit) as stopped:
        compare.main([str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--out", str(tmp_path)])
    assert stopped.value.code == 2
    other = results_of({"eval_other": ("Accuracy", {}, ["a"], ["a"])})
    write_run(tmp_path / "run_c", other, resamples=0)
    with pytest.raises(compare.ComparisonError, match="different test sets"):
        compare.check_pairable(
            compare.load_run(tmp_path / "run_a"), compare.load_run(tmp_path / "run_c")
        )


# ----------------------------------------------------------------------------- leaderboard


def test_the_leaderboard_shows_intervals_and_ties_as_ties(tmp_path):
    from xares.results import cli, leaderboard

    rng = np.random.default_rng(4)
    refs = list(rng.choice(LABELS, 150))

    def run(name, skill, seed):
        r = np.random.default_rng(seed)
        answers = [ref if r.random() < skill else "noise" for ref in refs]
        results = results_of({"eval_kws": ("Accuracy", {}, answers, refs)}, {"eval_kws": "A"}.get)
        write_run(tmp_path / "runs" / name, results)

    run("best", 0.9, 1)
    run("close", 0.88, 2)  # a few clips apart: a paired test cannot tell it from the best
    run("weak", 0.5, 3)
    board = leaderboard.build(scores.collect([tmp_path / "runs"]))
    cells = {row.label.split()[0]: row.cells["task:eval_kws"] for row in board.rows}
    assert [row.label.split()[0] for row in board.rows] == ["best", "close", "weak"]
    assert not cells["best"].tied and cells["close"].tied and not cells["weak"].tied
    for cell in cells.values():
        low, high = cell.interval
        assert low <= cell.mean <= high
    # The track's mean is that one set's score: its interval is the run's own overall one.
    track = next(c.key for c in board.columns if c.kind == "track")
    assert board.rows[0].cells[track].interval == pytest.approx(cells["best"].interval)
    assert board.rows[1].cells[track].tied
    written = cli.write_leaderboard(scores.collect([tmp_path / "runs"]), tmp_path / "report")
    md = written["leaderboard.md"].read_text()
    assert "≈" in md and "not significantly worse than the column's best" in md
    low, high = cells["weak"].interval
    assert f"[{low:.3f}, {high:.3f}]" in md
    assert 'class="tied"' in written["leaderboard.html"].read_text()
    # A board without challenge tracks names none, and leaves no empty brackets behind.
    assert "on its own ()" not in written["leaderboard.html"].read_text()
    # The legend names the level the runs drew their intervals at, not a fixed one.
    assert "bootstrap interval at 95 %" in md
    weak = tmp_path / "runs" / "weak" / "scores.json"
    record = json.loads(weak.read_text())
    record["intervals"]["level"] = 0.9
    weak.write_text(json.dumps(record))
    written = cli.write_leaderboard(scores.collect([tmp_path / "runs"]), tmp_path / "report")
    for name in ("leaderboard.md", "leaderboard.html"):
        assert "bootstrap interval at 90 % or 95 %" in written[name].read_text()
