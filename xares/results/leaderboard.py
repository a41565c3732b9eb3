"""The leaderboard of many runs: rows of encoders, columns of test sets grouped by track.

Runs are read from the ``run`` block of their ``scores.json`` (:mod:`xares.run.metadata`):

- runs with the same ``config_hash`` (everything but the seed) are seeds of one
  configuration, shown as mean ± sample standard deviation with their count n; each seed
  counts once: of several results for one seed (a run and its re-scoring with
  ``python -m xares.evaluate``), the latest by ``ended`` is kept;
- configurations of the same model (encoder label and ``model_hash``) on different test sets
  (a task1 run and a task2 run) share a row;
- a ``scores.json`` written before the ``run`` block existed is read from its run name
  (``<encoder>__<task>``), never merged with other runs, and marked as such.

Track means and the overall are weighted means over a row's test sets, as in ``scores.json``.
The challenge ranks each track on its own, so the track means lead the table; where its
normalised score (:class:`ChallengeScoring`) differs from a track's raw mean, it stands beside
it. The cross-track overall is xares' own summary.

A row whose runs are not all comparable with the challenge's public results (the
``comparability`` block of ``scores.json``) is marked, its reasons in a footnote, and never
wins a column against a comparable row. Reference rows (the published baselines and the
entries of the challenge's results page) are shown for comparison and never win a column.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import yaml

from xares.atomic import write_text
from xares.results.namesakes import separate_namesakes
from xares.results.scores import weighted_mean
from xares.results.templates import ASSETS, environment

BASELINES = ASSETS / "published_baselines.yaml"
CHALLENGE = ASSETS / "challenge_results.yaml"
SPREAD = "sample standard deviation over seeds"
FROM_FOLDER = "scores.json without run metadata: encoder and task read from the run's folder name"
PARTIAL = (
    "partial: some seed has no score for a test set of this mean, so its per-seed means would "
    "be over different test sets; shown is the weighted mean of the per-test-set means, without "
    "spread"
)
AGAINST = "the XARES-LLM challenge's public results"
NOT_COMPARABLE_MARK = "≠"
NOT_CHECKED_MARK = "?"
NOT_CHECKED = (
    "not checked: a scores.json written before runs carried a comparability verdict; re-score "
    "the run with `python -m xares.evaluate ckpt_path=RUN_DIR` to check it"
)
# What a reference row's label ends with, by its kind.
SUFFIX = {"baseline": "(published)", "reference": "(challenge)"}
NO_REASON = "not comparable (its scores.json gives no reason)"
TIED_MARK = "≈"
TIED = (
    "not significantly worse than the column's best: a paired test of the two runs on the same "
    "clips (exact McNemar for accuracy, else a permutation test) gives p ≥ {alpha:g}"
)

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One number of the table: the mean of ``values`` (one per seed) and where they came from."""

    values: list[float]
    runs: list[str] = field(default_factory=list)
    # A mean over test sets from different configurations: there is no per-seed value.
    combined: bool = False
    # A mean over test sets that not every seed scored: no per-seed value either.
    partial: bool = False
    # The run's bootstrap interval of this number (one run only: seeds show their spread).
    interval: list[float] | None = None
    # The interval's level (``intervals.level`` of the run that drew it).
    level: float | None = None
    # Not significantly worse than the column's best (a paired test on the same clips).
    tied: bool = False

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass(frozen=True)
class ChallengeScoring:
    """How the challenge turns a track's raw scores into its result (its README).

    Each test set's score M becomes (M - worst) / (best - worst), by the worst and best
    possible values of its metric, so a metric that can be negative (FENSE) counts on the same
    footing as one in [0, 1]; a track's result is the weighted mean of those, with equal weights
    where the challenge publishes none.
    """

    ranges: Mapping[str, tuple[float, float]]
    weights: Mapping[str, float] | None = None  # per test set; None: none published

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ChallengeScoring:
        scoring = data.get("scoring") or {}
        ranges = {}
        for metric, bounds in (scoring.get("ranges") or {}).items():
            worst, best = (float(b) for b in bounds)
            if not best > worst:
                raise ValueError(
                    f"the range of {metric} must be [worst, best] with best > worst, not {bounds}"
                )
            ranges[metric] = (worst, best)
        return cls(ranges, scoring.get("weights"))

    def normalise(self, metric: str, score: float) -> float:
        if metric not in self.ranges:
            raise KeyError(
                f"no worst and best possible value of {metric!r}: the challenge's metrics are "
                f"{', '.join(self.ranges)}"
            )
        worst, best = self.ranges[metric]
        return (score - worst) / (best - worst)

    def weight(self, task: str) -> float:
        if self.weights is None:
            return 1.0
        if task not in self.weights:
            raise KeyError(f"the challenge's weights give none for {task}")
        return float(self.weights[task])

    def covers(self, tests: Iterable[Mapping[str, Any]]) -> bool:
        return all(t["metric"] in self.ranges for t in tests)

    def differs(self, tests: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the challenge's score of these test sets (``task``, ``metric``, ``weight``
        as in scores.json) can differ from their raw weighted mean: a metric's range is not
        [0, 1], or the challenge weighs the sets otherwise."""
        if any(self.ranges[t["metric"]] != (0.0, 1.0) for t in tests):
            return True
        ours = np.array([float(t["weight"]) for t in tests])
        theirs = np.array([self.weight(t["task"]) for t in tests])
        return not np.allclose(ours / ours.sum(), theirs / theirs.sum())

    def mean(self, scores: Iterable[tuple[Mapping[str, Any], float]]) -> float:
        """The challenge's score of (test set, raw score) pairs."""
        return weighted_mean(
            {"score": self.normalise(t["metric"], score), "weight": self.weight(t["task"])}
            for t, score in scores
        )


@dataclass
class Column:
    key: str
    title: str
    track: str
    # "task", "track" (a track's mean), "normalised" (a track's score as the challenge
    # normalises it) or "overall"
    kind: str
    metric: str = ""
    subtitle: str = ""  # the challenge's name of a track ("Track A")


@dataclass
class Comparability:
    """Whether a row's runs are comparable with the challenge's public results."""

    reasons: list[str] = field(default_factory=list)  # of every run, each text once
    unchecked: int = 0  # runs whose scores.json predates the verdict
    against: str = AGAINST

    @property
    def comparable(self) -> bool:
        return not self.reasons and not self.unchecked


@dataclass
class Row:
    label: str
    kind: str  # "run", "baseline" (published baselines), "reference" (results page), "chance"
    cells: dict[str, Cell]
    detail: str = ""
    from_folder: bool = False
    seeds: int = 0
    coverage: int = 0
    parameters: int | None = None  # of the encoder, from the runs' efficiency blocks
    train_seconds: float | None = None  # summed over the row's configurations, mean over seeds
    comparability: Comparability = field(default_factory=Comparability)
    marks: list[str] = field(default_factory=list)  # footnote marks of its comparability

    @property
    def display(self) -> str:
        """The label with its marks, as legends and plots show it."""
        return " ".join([self.label, *self.marks])


@dataclass
class Configuration:
    """Seeds of one configuration: runs whose config hash matches."""

    runs: list[dict[str, Any]]

    @property
    def info(self) -> Mapping[str, Any]:
        return self.runs[0].get("run") or {}

    @cached_property
    def tasks(self) -> dict[str, Mapping[str, Any]]:
        return {t["task"]: t for t in self.runs[0]["tasks"]}

    def scores(self, task: str) -> list[tuple[float, str]]:
        pairs = []
        for run in self.runs:
            found = next((t for t in run["tasks"] if t["task"] == task), None)
            if found is not None and _number(found.get("score")) is not None:
                pairs.append((float(found["score"]), run["run_dir"]))
        return pairs


@dataclass
class Footnote:
    mark: str
    against: str
    reasons: list[str]


@dataclass
class Leaderboard:
    columns: list[Column]  # as shown: the track means first, then the test sets, the overall
    rows: list[Row]  # runs, ranked by their track means in track order
    references: list[Row]  # published baselines, then the results page's entries
    chance: Row | None
    # Per column, the rows that hold its best score among the runs that compete for it
    # (:func:`_winners`).
    winners: dict[str, list[Row]]
    source: str = ""  # of the published baselines
    challenge_source: str = ""  # of the results page's entries
    footnotes: list[Footnote] = field(default_factory=list)
    scoring: ChallengeScoring | None = None
    notes: list[str] = field(default_factory=list)  # tasks told apart (separate_namesakes)

    @property
    def best(self) -> dict[str, float]:
        return {key: rows[0].cells[key].mean for key, rows in self.winners.items()}

    @property
    def tracks(self) -> list[tuple[str, list[Column]]]:
        """Each track's test sets followed by its mean (the plots' panels)."""
        groups: dict[str, list[Column]] = {}
        for kind in ("task", "track"):
            for column in self.columns:
                if column.kind == kind:
                    groups.setdefault(column.track, []).append(column)
        return list(groups.items())

    @property
    def summary(self) -> Column | None:
        """The one number per row: the overall, or with a single track that track's mean."""
        for kind in ("overall", "track"):
            for column in self.columns:
                if column.kind == kind:
                    return column
        return None

    def is_best(self, row: Row, column: Column) -> bool:
        return any(row is winner for winner in self.winners.get(column.key, ()))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _task_track(task: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """A test set's track; sets of a suite without tracks (mini, smoke) go under its name."""
    return task.get("track") or run.get("task_name") or "tasks"


def _one_per_seed(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (configuration, seed): the latest by ``ended``.

    A run re-scored with ``python -m xares.evaluate`` has its training run's configuration and
    seed; counting both would weigh that model twice in the mean and the spread.
    """
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        info = run.get("run")
        if info:
            key = f"the same configuration ({info['config_hash']}) and seed ({info.get('seed')})"
        else:
            key = f"the same run directory ({Path(run['run_dir']).resolve()})"
        held = latest.get(key)
        if held is None:
            latest[key] = run
            continue
        newer, older = sorted((held, run), key=_ended, reverse=True)
        latest[key] = newer
        log.info(
            "left out %s: %s, which ended later, has %s; the leaderboard keeps one result per "
            "seed, the latest",
            older["run_dir"],
            newer["run_dir"],
            key,
        )
    return list(latest.values())


def _ended(run: Mapping[str, Any]) -> tuple[str, str]:
    return (str((run.get("run") or {}).get("ended") or ""), str(run["run_dir"]))


def _configurations(runs: Iterable[dict[str, Any]]) -> list[Configuration]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in _one_per_seed(runs):
        info = run.get("run")
        key = ("hash", info["config_hash"]) if info else ("folder", run["run_dir"])
        groups.setdefault(key, []).append(run)
    configs = [
        Configuration(sorted(rs, key=lambda r: (_seed(r), r["run_dir"]))) for rs in groups.values()
    ]
    return sorted(configs, key=lambda c: (c.runs[0]["encoder"], c.runs[0]["run_dir"]))


def _seed(run: Mapping[str, Any]) -> int:
    seed = (run.get("run") or {}).get("seed")
    return seed if isinstance(seed, int) else -1


def _model_key(config: Configuration) -> tuple:
    info = config.info
    if info:
        return ("run", info["encoder"], info.get("model_hash"))
    return ("folder", config.runs[0]["encoder"])


def _rows_of_configurations(configs: list[Configuration]) -> list[list[Configuration]]:
    """Configurations of one model on disjoint test sets share a row (task1 + task2 runs)."""
    rows: list[tuple[tuple, list[Configuration]]] = []
    for config in configs:
        key = _model_key(config)
        for row_key, members in rows:
            taken = {t for m in members for t in m.tasks}
            if row_key == key and not taken & set(config.tasks):
                members.append(config)
                break
        else:
            rows.append((key, [config]))
    return [members for _, members in rows]


def _mean_cell(
    members: list[Configuration], tasks: list[str], scoring: ChallengeScoring | None = None
) -> Cell | None:
    """The weighted mean over ``tasks`` (with ``scoring``: the challenge's score of them): per
    seed when one configuration holds them all and each of its seeds scored each of them;
    otherwise the mean of per-task means."""

    def mean(scored: Iterable[tuple[Mapping[str, Any], float]]) -> float:
        if scoring is not None:
            return scoring.mean(scored)
        return weighted_mean({"score": score, "weight": t["weight"]} for t, score in scored)

    holders = [m for m in members if set(tasks) & set(m.tasks)]
    complete = all(
        len(config.scores(task)) == len(config.runs)
        for config in holders
        for task in set(tasks) & set(config.tasks)
    )
    if len(holders) == 1 and complete:
        config = holders[0]
        values = [
            mean(
                (t, float(t["score"]))
                for t in run["tasks"]
                if t["task"] in tasks and _number(t.get("score")) is not None
            )
            for run in config.runs
        ]
        return Cell(values, [r["run_dir"] for r in config.runs])
    # The challenge's normalisation is linear, so that of a per-task mean is the mean of the
    # seeds' normalised scores.
    per_task = []
    for config in holders:
        for task in set(tasks) & set(config.tasks):
            pairs = config.scores(task)
            if pairs:
                per_task.append((config.tasks[task], statistics.fmean(s for s, _ in pairs)))
    if not per_task:
        return None
    runs = [r["run_dir"] for config in holders for r in config.runs]
    return Cell([mean(per_task)], runs, combined=len(holders) > 1, partial=not complete)


def _interval(value: Any) -> list[float] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_number(v) is not None for v in value)
    ):
        return [float(value[0]), float(value[1])]
    return None


def _own_interval(members: list[Configuration], column: Column, cell: Cell) -> list[float] | None:
    """A one-run cell's interval from the run's own scores.json, where the run's own mean is
    the cell's (same test sets, same weights)."""
    if len(cell.runs) != 1 or cell.combined or cell.partial:
        return None
    run = next(r for m in members for r in m.runs if r["run_dir"] == cell.runs[0])
    if column.kind == "overall":
        own, interval = run.get("overall"), run.get("overall_interval")
    else:
        own = (run.get("tracks") or {}).get(column.track)
        interval = (run.get("tracks_interval") or {}).get(column.track)
        if own is None and not run.get("tracks"):
            # A run of one track: its overall is that track's mean.
            own, interval = run.get("overall"), run.get("overall_interval")
    if _number(own) is None or not math.isclose(float(own), cell.mean, abs_tol=1e-9):
        return None
    return _interval(interval)


def _level(members: list[Configuration], run_dir: str) -> float | None:
    """The level a run drew its intervals at (its scores.json's ``intervals`` block)."""
    for member in members:
        for run in member.runs:
            if run["run_dir"] == run_dir:
                return _number((run.get("intervals") or {}).get("level"))
    return None


def interval_legend(levels: set[float]) -> str:
    """The legend's words for the intervals' level: the one the runs set, or each of them."""
    shown = sorted(f"{100 * level:g} %" for level in levels)
    if not shown:
        return ""
    if len(shown) == 1:
        return f" at {shown[0]}"
    return f" at {' or '.join(shown)} (as the cell's run set intervals.level)"


def _ties(columns: Sequence[Column], rows: Sequence[Row], winners: Mapping[str, list[Row]]) -> None:
    """Mark each one-run cell that a paired test cannot tell from its column's best.

    Only runs that scored the same clips as the best are tested; a row of several seeds
    shows its spread instead, and a published number has no answers to pair.
    """
    from xares.results import compare

    loaded: dict[str, Any] = {}
    results: dict[tuple[str, str], dict[str, Any] | None] = {}

    def run(path: str) -> Any:
        if path not in loaded:
            try:
                loaded[path] = compare.load_run(path)
            except (OSError, ValueError, KeyError) as error:
                log.warning("%s: not tested for ties with the best (%s)", path, error)
                loaded[path] = None
        return loaded[path]

    def paired(best: str, other: str) -> dict[str, Any] | None:
        if (best, other) not in results:
            a, b = run(best), run(other)
            try:
                results[best, other] = (
                    None
                    if a is None or b is None
                    else compare.compare(a, b, resamples=0, strict=False)
                )
            except ValueError as error:  # answers a metric cannot read: no test, no mark
                log.warning("%s vs %s: not tested for a tie (%s)", best, other, error)
                results[best, other] = None
        return results[best, other]

    for column in columns:
        if column.kind == "normalised" or column.key not in winners:
            continue
        best = winners[column.key][0].cells[column.key]
        if len(best.runs) != 1 or best.combined or best.partial:
            continue
        for row in rows:
            cell = row.cells.get(column.key)
            if row.kind != "run" or cell is None or any(row is w for w in winners[column.key]):
                continue
            if len(cell.runs) != 1 or cell.combined or cell.partial:
                continue
            result = paired(best.runs[0], cell.runs[0])
            p = None if result is None else _paired_p(result, column)
            cell.tied = p is not None and p >= compare.ALPHA


def _paired_p(result: Mapping[str, Any], column: Column) -> float | None:
    """The unadjusted p-value of ``column``'s number in a comparison, where every test set
    behind that number was paired."""
    if column.kind == "task":
        name = column.key.removeprefix("task:")
        entry = next((s for s in result["sets"] if s["task"] == name), None)
        return None if entry is None else entry["p"]
    if result["not_compared"]:
        return None
    means = {m["task"]: m for m in result["means"]}
    entry = means.get("overall") if column.kind == "overall" else means.get(f"mean {column.track}")
    if entry is None and column.kind == "track" and len(means) == 1:
        entry = means.get("overall")  # a run of one track: its overall is the track's mean
    return None if entry is None else entry["p"]


def _cost(members: list[Configuration]) -> dict[str, Any]:
    parameters, seconds = None, []
    for config in members:
        blocks = [r.get("efficiency") or {} for r in config.runs]
        for block in blocks:
            parameters = parameters or (block.get("encoder") or {}).get("parameters")
        times = [(b.get("seconds") or {}).get("train") for b in blocks]
        times = [t for t in times if t is not None]
        if times:
            seconds.append(statistics.fmean(times))
    return {"parameters": parameters, "train_seconds": sum(seconds) if seconds else None}


def _label(members: list[Configuration]) -> tuple[str, str, bool]:
    first = members[0]
    if not first.info:
        return first.runs[0]["encoder"], f"from the folder name of {first.runs[0]['run_dir']}", True
    info = first.info
    detail = [
        f"decoder {info.get('llm')}",
        f"projector {info.get('projector')}",
        *(f"{m.info.get('task')}: config {m.info.get('config_hash')}" for m in members),
    ]
    if info.get("encoder_class"):
        detail.insert(0, f"class {info['encoder_class']}")
    return info["encoder"], "; ".join(detail), False


def _distinct_labels(rows: list[Row], members_of: list[list[Configuration]]) -> None:
    """Rows that share an encoder label are told apart by what differs (decoder, projector)."""
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row.label, []).append(i)
    for indices in by_label.values():
        if len(indices) < 2:
            continue
        for key in ("llm", "projector"):
            values = {members_of[i][0].info.get(key) for i in indices}
            if len(values) > 1 and None not in values:
                for i in indices:
                    rows[i].label += f" · {members_of[i][0].info.get(key)}"
        labels = [rows[i].label for i in indices]
        twins = [i for i in indices if labels.count(rows[i].label) > 1]
        # Without a run block the run directory is all a row has; its folder name alone (a
        # date) repeats across runs, its path below what those rows share does not.
        folders = {
            i: Path(members_of[i][0].runs[0]["run_dir"]).resolve()
            for i in twins
            if not members_of[i][0].info
        }
        common = os.path.commonpath([f.parent for f in folders.values()]) if folders else ""
        for i in twins:
            if i in folders:
                rows[i].label += f" #{os.path.relpath(folders[i], common)}"
            else:
                rows[i].label += f" #{members_of[i][0].info['config_hash'][:7]}"


def _comparability(runs: Iterable[Mapping[str, Any]]) -> Comparability:
    """The verdicts of ``runs`` (their ``comparability`` blocks) taken together."""
    reasons: dict[str, None] = {}  # ordered and each text once
    unchecked, against = 0, ""
    for run in runs:
        block = run.get("comparability")
        if not isinstance(block, Mapping) or not isinstance(block.get("comparable"), bool):
            if block is not None:
                log.warning(
                    "%s/scores.json: its comparability block is not {comparable: true|false, "
                    "reasons: [...]}; the run is shown as not checked",
                    run["run_dir"],
                )
            unchecked += 1
            continue
        against = against or str(block.get("against") or "")
        if block["comparable"]:
            continue
        texts = [
            str(r.get("text") or r.get("code")) if isinstance(r, Mapping) else str(r)
            for r in block.get("reasons") or []
        ]
        reasons.update(dict.fromkeys(texts or [NO_REASON]))
    return Comparability(list(reasons), unchecked, against or AGAINST)


def _mark(rows: Iterable[Row]) -> list[Footnote]:
    """Give every row that is not comparable its marks: one numbered footnote per distinct set
    of reasons (rows with the same reasons share it), and ``?`` where some run was not checked."""
    footnotes: dict[tuple[str, ...], Footnote] = {}
    for row in rows:
        verdict = row.comparability
        if verdict.reasons:
            key = tuple(verdict.reasons)
            if key not in footnotes:
                mark = f"{NOT_COMPARABLE_MARK}{len(footnotes) + 1}"
                footnotes[key] = Footnote(mark, verdict.against, verdict.reasons)
            row.marks.append(footnotes[key].mark)
        if verdict.unchecked:
            row.marks.append(NOT_CHECKED_MARK)
    return list(footnotes.values())


def _winners(columns: Sequence[Column], rows: Sequence[Row]) -> dict[str, list[Row]]:
    """The rows holding each column's best score. Only runs compete, and only those comparable
    with the challenge where any of them has the column: a run scored on fewer clips, or in
    another precision, would otherwise be shown as better than runs whose numbers mean what
    the challenge's numbers mean."""
    winners = {}
    for column in columns:
        having = [r for r in rows if r.kind == "run" and column.key in r.cells]
        pool = [r for r in having if r.comparability.comparable] or having
        if pool:
            top = max(r.cells[column.key].mean for r in pool)
            winners[column.key] = [r for r in pool if math.isclose(r.cells[column.key].mean, top)]
    return winners


def _rank(rows: Iterable[Row], columns: Sequence[Column]) -> list[Row]:
    """Most test sets first, then by each track's mean in track order, as the challenge ranks a
    track (a row without a track's mean after those with it)."""
    tracks = [c.key for c in columns if c.kind == "track"]
    return sorted(
        rows,
        key=lambda r: (
            -r.coverage,
            *(-r.cells[k].mean if k in r.cells else math.inf for k in tracks),
        ),
    )


def published_baselines(path: Path = BASELINES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def challenge_results(path: Path = CHALLENGE) -> dict[str, Any]:
    """The challenge's scoring rules and its results page's entries (see the file's header)."""
    return yaml.safe_load(path.read_text())


def _sets_of(column: Column, specs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The test sets a mean column is taken over: its track's, or all for the overall."""
    return [
        n for n, spec in specs.items() if column.kind == "overall" or spec["track"] == column.track
    ]


def _fixed_cells(
    scores: Mapping[str, Any],
    tracks: Mapping[str, Any],
    columns: Sequence[Column],
    specs: Mapping[str, Mapping[str, Any]],
    scoring: ChallengeScoring,
) -> dict[str, Cell]:
    """Cells of a row of published numbers: the test sets the board has, each track's published
    result or else the plain mean of its test sets, and the challenge's score where shown."""
    cells = {f"task:{t}": Cell([float(v)]) for t, v in scores.items() if t in specs}
    for column in columns:
        if column.kind not in ("track", "normalised"):
            continue
        names = _sets_of(column, specs)
        complete = all(f"task:{n}" in cells for n in names)
        if column.kind == "track" and column.track in tracks:
            cells[column.key] = Cell([float(tracks[column.track])])
        elif column.kind == "track" and complete:
            cells[column.key] = Cell([statistics.fmean(cells[f"task:{n}"].mean for n in names)])
        elif column.kind == "normalised" and complete:
            scored = [(specs[n], cells[f"task:{n}"].mean) for n in names]
            cells[column.key] = Cell([scoring.mean(scored)])
    return cells


def _columns(
    specs: Mapping[str, Mapping[str, Any]],
    scoring: ChallengeScoring,
    names: Mapping[str, str],
) -> list[Column]:
    """The track means (and the challenge's score where it differs) first, as the challenge
    ranks each track on its own; then each track's test sets; xares' overall last."""
    order = sorted(
        {s["track"] for s in specs.values()}, key=lambda t: (not t.startswith("task"), t)
    )
    headline: list[Column] = []
    tests: list[Column] = []
    for track in order:
        sets = [specs[n] for n in sorted(specs) if specs[n]["track"] == track]
        name = names.get(track, "")
        headline.append(Column(f"track:{track}", f"{track} mean", track, "track", subtitle=name))
        if scoring.covers(sets) and scoring.differs(sets):
            headline.append(
                Column(
                    f"normalised:{track}",
                    f"{track} normalised",
                    track,
                    "normalised",
                    subtitle=name,
                )
            )
        tests += [
            Column(f"task:{s['task']}", s["task"].removeprefix("eval_"), track, "task", s["metric"])
            for s in sets
        ]
    overall = [Column("overall", "overall", "", "overall", subtitle="xares, all tracks")]
    return headline + tests + (overall if len(order) > 1 else [])


def _run_row(
    members: list[Configuration],
    columns: Sequence[Column],
    specs: Mapping[str, Mapping[str, Any]],
    scoring: ChallengeScoring,
) -> Row:
    cells: dict[str, Cell] = {}
    for config in members:
        for task in config.tasks:
            pairs = config.scores(task)
            if pairs:
                cell = Cell([s for s, _ in pairs], [d for _, d in pairs])
                if len(pairs) == 1:
                    cell.interval = _interval(config.tasks[task].get("interval"))
                    cell.level = _level(members, cell.runs[0]) if cell.runs else None
                cells[f"task:{task}"] = cell
    for column in columns:
        if column.kind != "task":
            names = _sets_of(column, specs)
            cell = _mean_cell(members, names, scoring if column.kind == "normalised" else None)
            if cell is not None:
                if column.kind in ("track", "overall"):
                    cell.interval = _own_interval(members, column, cell)
                    if cell.interval is not None:
                        cell.level = _level(members, cell.runs[0])
                cells[column.key] = cell
    label, detail, from_folder = _label(members)
    return Row(
        label,
        "run",
        cells,
        detail,
        from_folder,
        seeds=max(len(m.runs) for m in members),
        coverage=sum(1 for k in cells if k.startswith("task:")),
        comparability=_comparability(r for m in members for r in m.runs),
        **_cost(members),
    )


def _reference_rows(
    baselines: Mapping[str, Any],
    challenge: Mapping[str, Any],
    columns: Sequence[Column],
    specs: Mapping[str, Mapping[str, Any]],
    scoring: ChallengeScoring,
) -> list[Row]:
    """The published baselines as given, then the results page's entries ranked by track."""
    rows = []
    published = (
        ("baseline", baselines.get("encoders") or {}),
        ("reference", challenge.get("entries") or {}),
    )
    for kind, numbers_of in published:
        for name, numbers in numbers_of.items():
            cells = _fixed_cells(
                numbers.get("tasks") or {}, numbers.get("tracks") or {}, columns, specs, scoring
            )
            if cells:
                detail = baselines.get("source", "") if kind == "baseline" else ""
                detail = detail or numbers.get("affiliation", "")
                rows.append(Row(f"{name} {SUFFIX[kind]}", kind, cells, detail))
    baseline_rows = [r for r in rows if r.kind == "baseline"]
    return baseline_rows + _rank([r for r in rows if r.kind == "reference"], columns)


def _chance_row(
    columns: Sequence[Column], specs: Mapping[str, Mapping[str, Any]], scoring: ChallengeScoring
) -> Row | None:
    """Chance levels, where the task files give them; a mean only where all of its sets have
    one."""
    cells = {
        f"task:{name}": Cell([float(spec["chance"])])
        for name, spec in specs.items()
        if spec.get("chance") is not None
    }
    for column in columns:
        names = _sets_of(column, specs)
        if column.kind == "task" or not all(f"task:{n}" in cells for n in names):
            continue
        scored = [(specs[n], cells[f"task:{n}"].mean) for n in names]
        if column.kind == "normalised":
            cells[column.key] = Cell([scoring.mean(scored)])
        else:
            weighted = ({"score": s, "weight": t["weight"]} for t, s in scored)
            cells[column.key] = Cell([weighted_mean(weighted)])
    return Row("chance", "chance", cells) if cells else None


def build(
    runs: Sequence[dict[str, Any]],
    baselines: Mapping[str, Any] | None = None,
    challenge: Mapping[str, Any] | None = None,
) -> Leaderboard:
    """The leaderboard of ``runs`` (as :func:`xares.results.scores.load_run_scores` returns them), with
    the published ``baselines`` and the ``challenge``'s results page as reference rows."""
    baselines = published_baselines() if baselines is None else baselines
    challenge = challenge_results() if challenge is None else challenge
    scoring = ChallengeScoring.from_data(challenge)
    # Runs of two different tasks that share a name are never averaged together.
    runs, notes = separate_namesakes(runs)
    # Every test set seen, with its track (the first run that has it says).
    specs: dict[str, dict[str, Any]] = {}
    for run in runs:
        for task in run["tasks"]:
            specs.setdefault(task["task"], {**task, "track": _task_track(task, run)})
    columns = _columns(specs, scoring, challenge.get("tracks") or {})

    members_of = _rows_of_configurations(_configurations(runs))
    rows = [_run_row(members, columns, specs, scoring) for members in members_of]
    _distinct_labels(rows, members_of)
    rows = _rank(rows, columns)
    footnotes = _mark(rows)
    source = challenge.get("source") or {}
    winners = _winners(columns, rows)
    _ties(columns, rows, winners)
    return Leaderboard(
        columns,
        rows,
        _reference_rows(baselines, challenge, columns, specs, scoring),
        _chance_row(columns, specs, scoring),
        winners,
        baselines.get("source", ""),
        source.get("text", "") if isinstance(source, Mapping) else str(source),
        footnotes,
        scoring,
        notes,
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _number_text(value: float) -> str:
    return f"{value:g}".replace("-", "−")


def normalised_note(scoring: ChallengeScoring) -> str:
    """How the normalised columns are computed, in words, from the ranges in use."""
    by_range: dict[tuple[float, float], list[str]] = {}
    for metric, bounds in scoring.ranges.items():
        by_range.setdefault(bounds, []).append(metric)
    ranges = "; ".join(
        f"{', '.join(metrics)}: {_number_text(worst)} to {_number_text(best)}"
        for (worst, best), metrics in by_range.items()
    )
    weights = (
        "with equal weights (the challenge publishes none)"
        if scoring.weights is None
        else "with the challenge's weights"
    )
    return (
        "Normalised: a track's score as the challenge's README defines it, each test set's score "
        "M mapped to (M − worst) / (best − worst) by the worst and best possible values of its "
        f"metric ({ranges}), then averaged {weights}; shown only where it differs from the raw "
        "mean. The results page's public test result of a track is the plain mean of the "
        "per-task scores it prints, which read as raw scores: it compares with the raw mean"
    )


def _group(column: Column) -> str:
    """The header group of a column: the track means together, each track's test sets."""
    return {"task": column.track, "overall": "overall"}.get(column.kind, "headline")


def render_context(board: Leaderboard, out: Path) -> dict[str, Any]:
    """What the templates show: formatted cells with relative links to the run directories."""

    def cell(row: Row, column: Column) -> dict[str, Any]:
        found = row.cells.get(column.key)
        empty = {
            "text": "–",
            "spread": None,
            "n": None,
            "href": None,
            "title": "",
            "marks": [],
            "interval": None,
            "tied": False,
        }
        if found is None:
            return empty | {"combined": False, "partial": False, "best": False}
        link = os.path.relpath(found.runs[0], out) if found.runs and column.kind == "task" else None
        spread = found.spread
        per_seed = row.kind == "run" and not (found.combined or found.partial)
        best = board.is_best(row, column)
        return {
            "text": _fmt(found.mean),
            "spread": None if spread is None else f"{spread:.3f}",
            # n is in the row's seeds column; a cell repeats it only where it differs.
            "n": found.n if per_seed and found.n != row.seeds else None,
            "href": link and quote(link),
            "title": "\n".join(os.path.relpath(r, out) for r in found.runs),
            "combined": found.combined,
            "partial": found.partial,
            "best": best,
            # A best that no comparable run contests says so where it is highlighted.
            "marks": row.marks if best else [],
            "interval": None
            if found.interval is None
            else f"[{_fmt(found.interval[0])}, {_fmt(found.interval[1])}]",
            "tied": found.tied,
        }

    def rows(rs: Iterable[Row]) -> list[dict[str, Any]]:
        return [
            {
                "label": r.label,
                "kind": r.kind,
                "detail": r.detail,
                "from_folder": r.from_folder,
                "seeds": r.seeds,
                "marks": r.marks,
                "cells": [cell(r, c) for c in board.columns],
            }
            for r in rs
        ]

    columns = board.columns
    groups: list[dict[str, Any]] = []
    for column in columns:
        if column.kind == "overall":
            continue  # a header of its own, both header rows high
        if not groups or groups[-1]["key"] != _group(column):
            title = column.track if column.kind == "task" else "per track, as the challenge ranks"
            groups.append({"key": _group(column), "title": title, "span": 0})
        groups[-1]["span"] += 1
    names = {c.track: c.subtitle for c in columns if c.kind == "track" and c.subtitle}
    for group in groups:
        group["subtitle"] = names.get(group["key"], "")
    sections = [
        {
            "kind": kind,
            "title": title,
            "suffix": SUFFIX[kind],
            "rows": rows(r for r in board.references if r.kind == kind),
        }
        for kind, title in (
            ("baseline", f"published baselines ({board.source})"),
            ("reference", board.challenge_source),
        )
    ]
    return {
        "groups": groups,
        "columns": columns,
        "first_of_group": [
            i == 0 or _group(c) != _group(columns[i - 1]) for i, c in enumerate(columns)
        ],
        "rows": rows(board.rows),
        "sections": [s for s in sections if s["rows"]],
        "references": rows(board.references),
        "chance": rows([board.chance])[0] if board.chance else None,
        "source": board.source,
        "challenge_source": board.challenge_source,
        "spread": SPREAD,
        "from_folder": FROM_FOLDER,
        "any_from_folder": any(r.from_folder for r in board.rows),
        "any_combined": any(c.combined for r in board.rows for c in r.cells.values()),
        "partial": PARTIAL,
        "any_partial": any(c.partial for r in board.rows for c in r.cells.values()),
        "any_interval": any(c.interval for r in board.rows for c in r.cells.values()),
        "interval_level": interval_legend(
            {
                c.level
                for r in board.rows
                for c in r.cells.values()
                if c.interval is not None and c.level is not None
            }
        ),
        "any_tied": any(c.tied for r in board.rows for c in r.cells.values()),
        "tied_mark": TIED_MARK,
        "tied": TIED.format(alpha=0.05),
        "notes": board.notes,
        "footnotes": [
            {"mark": f.mark, "text": f"not comparable with {f.against}: " + "; ".join(f.reasons)}
            for f in board.footnotes
        ],
        "not_checked": (
            {"mark": NOT_CHECKED_MARK, "text": NOT_CHECKED}
            if any(NOT_CHECKED_MARK in r.marks for r in board.rows)
            else None
        ),
        "normalised": (
            normalised_note(board.scoring)
            if board.scoring and any(c.kind == "normalised" for c in columns)
            else ""
        ),
    }


def _markdown_text(text: Any) -> str:
    """Text safe in a markdown table cell: ``|`` would end the cell, ``<``/``>`` open HTML."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _markdown_cell(cell: Mapping[str, Any]) -> str:
    text = f"**{cell['text']}**" if cell.get("best") else cell["text"]
    if cell.get("href"):
        text = f"[{text}]({cell['href']})"
    if cell.get("combined"):
        text += "*"
    if cell.get("partial"):
        text += "‡"
    if cell.get("tied"):
        text += f" {TIED_MARK}"
    if cell.get("marks"):
        text += " " + " ".join(cell["marks"])
    if cell.get("spread"):
        text += f" ± {cell['spread']}"
    if cell.get("n"):
        text += f" (n={cell['n']})"
    if cell.get("interval"):
        text += f" {cell['interval']}"
    return text


def write(
    board: Leaderboard,
    out: Path,
    plots: Sequence[tuple[Path, str]] = (),
    skipped: Sequence[str] = (),
    runs: int = 0,
    sources: str = "",
) -> dict[str, Path]:
    """``leaderboard.md`` and ``leaderboard.html`` into ``out``; the HTML is self-contained
    (CSS inline, the ``plots`` embedded as data URIs), the markdown refers to the PNG files.
    ``skipped`` says which plots are missing and why."""
    import base64
    from datetime import datetime, timezone

    shown = [
        {
            "file": path.name,
            "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(),
            "caption": caption,
        }
        for path, caption in plots
    ]
    context = render_context(board, out)
    context.update(
        runs=runs,
        sources=sources or "the given folders",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        plots=shown,
        skipped=list(skipped),
    )
    written = {}
    for name in ("leaderboard.md", "leaderboard.html"):
        env = environment(html=name.endswith(".html"))
        env.globals["md"] = _markdown_cell
        env.filters["mdtext"] = _markdown_text
        path = out / name
        write_text(path, env.get_template(f"{name}.j2").render(**context))
        written[name] = path
    return written
