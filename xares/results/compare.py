"""``python -m xares.compare RUN_A RUN_B``: is B better than A, test set by test set?

Two runs that scored the same clips are compared pair by pair. For each test set: the
difference B − A, its paired bootstrap interval (one resample of clips serves both runs), and a
paired p-value: the exact McNemar test for accuracy (one answer per clip, right or wrong), and
for every other metric a paired permutation test, which swaps the two runs' answers clip by
clip and recomputes the metric as it is defined. The p-values are adjusted for the number of
test sets with Holm's step-down method; tracks and the overall get the same tests on their
weighted means, with every set of the track resampled (or swapped) at once.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from xares.atomic import write_text
from xares.layout import SCORES_JSON, predictions_file
from xares.metrics import build_metric
from xares.results.intervals import (
    CHUNK_DRAWS,
    SetStatistics,
    percentile_interval,
    replicate_scores,
    set_statistics,
    weighted_replicates,
)
from xares.results.scores import _render, load_run_scores, read_predictions

ALPHA = 0.05


class ComparisonError(ValueError):
    """The two runs cannot be paired: they did not score the same clips of the same sets."""


@dataclass
class ScoredRun:
    """A run directory as a comparison reads it: its summary and each set's answers."""

    label: str
    directory: Path
    summary: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # scores.json entries
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _statistics: dict[str, SetStatistics] = field(default_factory=dict, repr=False)

    def statistics(self, task: str) -> SetStatistics:
        """One set's per-clip statistics, in this run's order of its clips. Made once: a
        leaderboard pairs a run with every other run of its columns."""
        if task not in self._statistics:
            entry = self.tasks[task]
            metric = build_metric(entry["metric"], entry.get("metric_args") or {})
            self._statistics[task] = set_statistics(task, metric, self.rows[task])
        return self._statistics[task]


def load_run(directory: str | Path) -> ScoredRun:
    """The scores and answers of a run directory (``scores.json``, ``predictions_*.csv``)."""
    directory = Path(directory)
    if not (directory / SCORES_JSON).is_file():
        raise ComparisonError(
            f"{directory} holds no scores.json: give the directory of a finished run (the one "
            "with scores.tsv, scores.json and predictions_<set>.csv)"
        )
    summary = load_run_scores(directory)
    run = ScoredRun(f"{summary['encoder']} ({directory.name})", directory, summary)
    for entry in summary["tasks"]:
        name = entry["task"]
        run.tasks[name] = entry
        path = directory / predictions_file(name)
        if entry.get("score") is not None and path.is_file():
            run.rows[name] = read_predictions(path)
    return run


def check_pairable(a: ScoredRun, b: ScoredRun, strict: bool = True) -> list[str]:
    """The test sets both runs scored on the same clips; a :class:`ComparisonError` naming
    the first mismatch otherwise. Not ``strict``: the sets that can be paired, the others
    left out without an error (a leaderboard pairs what it can)."""
    names_a, names_b = list(a.tasks), list(b.tasks)
    if not strict:
        paired = []
        for name in (n for n in names_a if n in b.tasks):
            single_a = ScoredRun(a.label, a.directory, a.summary, {name: a.tasks[name]}, a.rows)
            single_b = ScoredRun(b.label, b.directory, b.summary, {name: b.tasks[name]}, b.rows)
            try:
                paired += check_pairable(single_a, single_b)
            except ComparisonError:
                continue
        return paired
    if set(names_a) != set(names_b):
        only_a = sorted(set(names_a) - set(names_b))
        only_b = sorted(set(names_b) - set(names_a))
        raise ComparisonError(
            f"the runs scored different test sets: only {a.label} has {only_a or 'none'}, "
            f"only {b.label} has {only_b or 'none'}. Compare runs of the same task."
        )
    paired = []
    for name in names_a:
        ta, tb = a.tasks[name], b.tasks[name]
        ida, idb = ta.get("set_id"), tb.get("set_id")
        if ida and idb and ida != idb:
            raise ComparisonError(
                f"{name}: the runs scored different versions of this test set (set_id {ida} vs "
                f"{idb}: other shards, label key, prompt or metric). Rescore one of them with "
                "the other's task file."
            )
        if ta["metric"] != tb["metric"] or (ta.get("metric_args") or {}) != (
            tb.get("metric_args") or {}
        ):
            raise ComparisonError(f"{name}: the runs scored it with different metrics")
        if not a.rows.get(name) or not b.rows.get(name):
            continue  # not scored (or its answers are gone) in one of them: nothing to pair
        keys_a = {r["key"]: r["references"] for r in a.rows[name]}
        keys_b = {r["key"]: r["references"] for r in b.rows[name]}
        if keys_a.keys() != keys_b.keys():
            missing_b = sorted(keys_a.keys() - keys_b.keys())
            missing_a = sorted(keys_b.keys() - keys_a.keys())
            raise ComparisonError(
                f"{name}: the runs scored different clips ({len(keys_a)} vs {len(keys_b)}; "
                f"only in {a.label}: {missing_b[:3]}{' ...' if len(missing_b) > 3 else ''}, "
                f"only in {b.label}: {missing_a[:3]}{' ...' if len(missing_a) > 3 else ''}). "
                "A paired comparison needs the same clips: rescore both without eval_limit, "
                "or with the same one, on the same shards."
            )
        changed = [k for k in keys_a if keys_a[k] != keys_b[k]]
        if changed:
            raise ComparisonError(
                f"{name}: {len(changed)} clip(s) have other references in the two runs (first: "
                f"{changed[0]}); the runs read different labels for the same clips."
            )
        paired.append(name)
    return paired


def _aligned(a: ScoredRun, b: ScoredRun, name: str) -> tuple[SetStatistics, SetStatistics]:
    """Both runs' statistics of one set, B's clips in A's order. A clip's row does not depend
    on the other clips (mAP's columns are the references' labels, the same in both runs), so
    B's rows are moved, not made again."""
    sa, sb = a.statistics(name), b.statistics(name)
    if sb.keys == sa.keys:
        return sa, sb
    places: dict[str, list[int]] = {}
    for index, key in enumerate(sb.keys):
        places.setdefault(key, []).append(index)
    order = np.array([places[key].pop(0) for key in sa.keys], dtype=np.intp)
    return sa, replace(sb, keys=sa.keys, values=sb.values[order])


def mcnemar_p(hits_a: np.ndarray, hits_b: np.ndarray) -> float:
    """The exact (binomial) McNemar test of two runs' right/wrong answers on the same clips."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = hits_a.astype(bool), hits_b.astype(bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (statsmodels), NaN entries left out and kept NaN."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(values.shape, np.nan)
    known = np.isfinite(values)
    if known.any():
        # statsmodels ends Holm with a full gc.collect(). With a leaderboard's answers in
        # memory that took about 0.4 s a call; frozen, the objects alive now are not scanned.
        # (A program that froze objects itself keeps them frozen: it is left as it is.)
        ours = gc.get_freeze_count() == 0
        if ours:
            gc.freeze()
        try:
            adjusted[known] = multipletests(values[known], method="holm")[1]
        finally:
            if ours:
                gc.unfreeze()
    return adjusted.tolist()


def permuted_differences(
    sa: SetStatistics, sb: SetStatistics, permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """B − A of each permutation, in which every clip swaps its two answers with probability
    ½: a swapped clip counts A's answer for B and B's for A."""
    delta = sb.values - sa.values
    total_a = _dense(sa.values.sum(axis=0)).ravel()
    total_b = _dense(sb.values.sum(axis=0)).ravel()
    step = max(1, min(permutations, CHUNK_DRAWS // max(sa.clips, 1)))
    parts = []
    for start in range(0, permutations, step):
        rows = min(step, permutations - start)
        swaps = rng.integers(0, 2, size=(rows, sa.clips)).astype(np.float64)
        moved = _dense((delta.T @ swaps.T).T if sparse.issparse(delta) else swaps @ delta)
        parts.append(sb.combine(total_b - moved) - sa.combine(total_a + moved))
    return np.concatenate(parts)


def _dense(value: Any) -> np.ndarray:
    return np.asarray(value.toarray() if sparse.issparse(value) else value, dtype=np.float64)


def _permutation_p(observed: float, permuted: np.ndarray) -> float:
    """Two-sided: the share of permutations at least as far from 0 as the observed difference
    (counting the observed one, so p is never 0)."""
    extreme = np.sum(np.abs(permuted) >= abs(observed) - 1e-12)
    return float((extreme + 1) / (len(permuted) + 1))


def _single_pairs(stats: SetStatistics) -> bool:
    # Accuracy's rows are (hits, pairs); one pair per clip makes each clip right or wrong.
    return bool(np.all(_dense(stats.values)[:, 1] == 1))


def compare(
    a: ScoredRun,
    b: ScoredRun,
    *,
    resamples: int = 1000,
    permutations: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    strict: bool = True,
) -> dict[str, Any]:
    """The comparison of two runs (B − A) as a JSON-ready dict: sets, tracks, overall.

    ``strict=False`` compares the sets that can be paired instead of refusing the runs
    (``not_compared`` lists the others)."""
    paired = check_pairable(a, b, strict=strict)
    rng = np.random.default_rng(seed)
    sets: list[dict[str, Any]] = []
    boot: dict[str, np.ndarray] = {}
    perm: dict[str, np.ndarray] = {}
    observed: dict[str, tuple[float, float]] = {}
    weights = {n: float(a.tasks[n]["weight"]) for n in paired}
    for name in paired:
        sa, sb = _aligned(a, b, name)
        score_a, score_b = sa.score(), sb.score()
        diff = score_b - score_a
        boot_a, boot_b = replicate_scores([sa, sb], resamples, rng)
        boot[name] = boot_b - boot_a
        perm[name] = permuted_differences(sa, sb, permutations, rng)
        observed[name] = (score_a, score_b)
        metric = a.tasks[name]["metric"]
        if metric == "Accuracy" and _single_pairs(sa):
            test, p = "exact McNemar", mcnemar_p(_dense(sa.values)[:, 0], _dense(sb.values)[:, 0])
        else:
            test, p = "paired permutation", _permutation_p(diff, perm[name])
        sets.append(
            {
                "task": name,
                "metric": metric,
                "track": a.tasks[name].get("track"),
                "clips": sa.clips,
                "a": score_a,
                "b": score_b,
                "difference": diff,
                "interval": _pair(percentile_interval(boot[name], level)),
                "test": test,
                "p": p,
            }
        )
    for entry, adjusted in zip(sets, holm([s["p"] for s in sets])):
        entry["p_holm"] = adjusted
        entry["significant"] = bool(adjusted < ALPHA)
    groups: dict[str, list[str]] = {}
    for entry in sets:
        if entry["track"]:
            groups.setdefault(f"mean {entry['track']}", []).append(entry["task"])
    if len(groups) < 2:
        groups = {}
    groups["overall"] = list(paired)
    means: list[dict[str, Any]] = []
    for label, members in groups.items():
        members = [m for m in members if weights.get(m, 0) > 0]
        if not members:
            continue
        share = {m: weights[m] for m in members}
        mean_a = sum(observed[m][0] * share[m] for m in members) / sum(share.values())
        mean_b = sum(observed[m][1] * share[m] for m in members) / sum(share.values())
        diff = mean_b - mean_a
        joint_boot = weighted_replicates({m: boot[m] for m in members}, share)
        joint_perm = weighted_replicates({m: perm[m] for m in members}, share)
        means.append(
            {
                "task": label,
                "sets": members,
                "a": mean_a,
                "b": mean_b,
                "difference": diff,
                "interval": _pair(percentile_interval(joint_boot, level)),
                "test": "paired permutation (all sets at once)",
                "p": _permutation_p(diff, joint_perm),
            }
        )
    for entry, adjusted in zip(means, holm([m["p"] for m in means])):
        entry["p_holm"] = adjusted
        entry["significant"] = bool(adjusted < ALPHA)
    unpaired = [n for n in dict.fromkeys([*a.tasks, *b.tasks]) if n not in paired]
    return {
        "a": {"label": a.label, "run_dir": str(a.directory)},
        "b": {"label": b.label, "run_dir": str(b.directory)},
        "settings": {
            "resamples": resamples,
            "permutations": permutations,
            "level": level,
            "seed": seed,
            "alpha": ALPHA,
        },
        "sets": sets,
        "means": means,
        "not_compared": unpaired,
    }


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [interval[0], interval[1]]


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _interval(interval: Sequence[float] | None) -> str:
    return "-" if not interval else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"


def table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    level = f"{result['settings']['level'] * 100:g}% CI"
    header = ["test set", "metric", "A", "B", "B - A", level, "p", "p (Holm)", "", "test"]

    def line(entry: Mapping[str, Any]) -> list[str]:
        return [
            entry["task"],
            entry.get("metric", ""),
            _num(entry["a"]),
            _num(entry["b"]),
            _num(entry["difference"], signed=True),
            _interval(entry["interval"]),
            _p(entry["p"]),
            _p(entry["p_holm"]),
            "*" if entry["significant"] else "",
            entry["test"],
        ]

    return header, [line(s) for s in result["sets"]], [line(m) for m in result["means"]]


def notes(result: Mapping[str, Any]) -> list[str]:
    settings = result["settings"]
    lines = [
        f"* significant at {settings['alpha']:g} after Holm's adjustment over the "
        f"{len(result['sets'])} test sets (the means are adjusted among themselves); "
        f"{settings['resamples']} bootstrap resamples, {settings['permutations']} "
        f"permutations, seed {settings['seed']}."
    ]
    if result["not_compared"]:
        lines.append(f"not compared (unscored in a run): {', '.join(result['not_compared'])}")
    return lines


def format_comparison(result: Mapping[str, Any]) -> str:
    header, body, footer = table_rows(result)
    head = [f"A: {result['a']['label']}", f"B: {result['b']['label']}", ""]
    return "\n".join([*head, _render(header, body, footer), "", *notes(result)])


def markdown(result: Mapping[str, Any]) -> str:
    header, body, footer = table_rows(result)
    rows = [header, ["---"] * len(header), *body, *footer]
    table = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)
    return (
        f"# {result['b']['label']} vs {result['a']['label']}\n\n"
        f"- A: `{result['a']['run_dir']}`\n- B: `{result['b']['run_dir']}`\n\n"
        f"{table}\n\n" + "\n".join(notes(result)) + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xares.compare",
        description="Paired comparison of two runs that scored the same clips: B - A per test "
        "set, per track and overall, with bootstrap intervals and Holm-adjusted p-values.",
    )
    parser.add_argument("run_a", help="run directory A (the baseline)")
    parser.add_argument("run_b", help="run directory B")
    parser.add_argument("--out", default="outputs/compare", help="folder for the .md and .json")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--permutations", type=int, default=1000, help="permutations per test")
    parser.add_argument("--level", type=float, default=0.95, help="interval level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
        result = compare(
            a,
            b,
            resamples=args.resamples,
            permutations=args.permutations,
            level=args.level,
            seed=args.seed,
        )
    except ComparisonError as error:
        parser.exit(2, f"cannot compare: {error}\n")
    print(format_comparison(result))
    out = Path(args.out)
    stem = f"{Path(args.run_a).name}__vs__{Path(args.run_b).name}"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    write_text(out / f"{stem}.md", markdown(result))
    print(f"\nwrote {stem}.json and {stem}.md to {out}/")
    return 0
