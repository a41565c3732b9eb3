"""The leaderboard of many runs: rows of encoders, columns of test sets grouped by track.

Runs are read from the ``run`` block of their ``scores.json`` (:mod:`xares.run_info`):

- runs with the same ``config_hash`` (everything but the seed) are seeds of one
  configuration, shown as mean ± sample standard deviation with their count n; each seed
  counts once: of several results for one seed (a run and its re-scoring with
  ``python -m xares.evaluate``), the latest by ``ended`` is kept;
- configurations of the same model (encoder label and ``model_hash``) on different test sets
  (a task1 run and a task2 run) share a row;
- a ``scores.json`` written before the ``run`` block existed is read from its run name
  (``<encoder>__<task>``), never merged with other runs, and marked as such.

Track means and the overall are weighted means over a row's test sets, as in ``scores.json``.
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

ASSETS = Path(__file__).resolve().parent / "report_assets"
BASELINES = ASSETS / "published_baselines.yaml"
SPREAD = "sample standard deviation over seeds"
FROM_FOLDER = "scores.json without run metadata: encoder and task read from the run's folder name"
PARTIAL = (
    "partial: some seed has no score for a test set of this mean, so its per-seed means would "
    "be over different test sets; shown is the weighted mean of the per-test-set means, without "
    "spread"
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

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def spread(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Column:
    key: str
    title: str
    track: str
    kind: str  # "task", "track" (a track's mean) or "overall"
    metric: str = ""


@dataclass
class Row:
    label: str
    kind: str  # "run", "baseline" or "chance"
    cells: dict[str, Cell]
    detail: str = ""
    from_folder: bool = False
    seeds: int = 0
    coverage: int = 0
    parameters: int | None = None  # of the encoder, from the runs' efficiency blocks
    train_seconds: float | None = None  # summed over the row's configurations, mean over seeds


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
class Leaderboard:
    columns: list[Column]
    rows: list[Row]  # runs, best overall first
    references: list[Row]  # published baselines
    chance: Row | None
    best: dict[str, float]
    source: str = ""

    @property
    def tracks(self) -> list[tuple[str, list[Column]]]:
        groups: dict[str, list[Column]] = {}
        for column in self.columns:
            if column.kind != "overall":
                groups.setdefault(column.track, []).append(column)
        return list(groups.items())

    def is_best(self, row: Row, column: Column) -> bool:
        cell = row.cells.get(column.key)
        best = self.best.get(column.key)
        return cell is not None and best is not None and math.isclose(cell.mean, best)


def _weighted_mean(items: Iterable[Mapping[str, Any]]) -> float:
    """The mean of ``score`` weighted by ``weight`` (items are scored test sets or cells)."""
    items = list(items)
    weights = [float(i["weight"]) for i in items]
    if not items or sum(weights) <= 0:
        return float("nan")
    return float(np.average([float(i["score"]) for i in items], weights=weights))


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


def _mean_cell(members: list[Configuration], tasks: list[str]) -> Cell | None:
    """The weighted mean over ``tasks``: per seed when one configuration holds them all and
    each of its seeds scored each of them; otherwise the weighted mean of per-task means."""
    holders = [m for m in members if set(tasks) & set(m.tasks)]
    complete = all(
        len(config.scores(task)) == len(config.runs)
        for config in holders
        for task in set(tasks) & set(config.tasks)
    )
    if len(holders) == 1 and complete:
        config = holders[0]
        values = [
            _weighted_mean(
                {"score": t["score"], "weight": t["weight"]}
                for t in run["tasks"]
                if t["task"] in tasks and _number(t.get("score")) is not None
            )
            for run in config.runs
        ]
        return Cell(values, [r["run_dir"] for r in config.runs])
    cells = []
    for config in holders:
        for task in set(tasks) & set(config.tasks):
            pairs = config.scores(task)
            if pairs:
                mean = statistics.fmean(s for s, _ in pairs)
                cells.append({"score": mean, "weight": config.tasks[task]["weight"]})
    if not cells:
        return None
    runs = [r["run_dir"] for config in holders for r in config.runs]
    return Cell([_weighted_mean(cells)], runs, combined=len(holders) > 1, partial=not complete)


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


def published_baselines(path: Path = BASELINES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def build(
    runs: Sequence[dict[str, Any]], baselines: Mapping[str, Any] | None = None
) -> Leaderboard:
    """The leaderboard of ``runs`` (as :func:`xares.report.load_run_scores` returns them)."""
    baselines = published_baselines() if baselines is None else baselines
    # Columns: every test set seen, grouped by track (challenge tracks first), by name inside.
    tasks: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for run in runs:
        for task in run["tasks"]:
            tasks.setdefault(task["task"], (_task_track(task, run), task))
    order = sorted({t for t, _ in tasks.values()}, key=lambda t: (not t.startswith("task"), t))
    columns: list[Column] = []
    track_tasks: dict[str, list[str]] = {}
    for track in order:
        names = sorted(name for name, (t, _) in tasks.items() if t == track)
        track_tasks[track] = names
        columns += [
            Column(f"task:{n}", n.removeprefix("eval_"), track, "task", tasks[n][1]["metric"])
            for n in names
        ]
        if len(order) > 1:  # one track's mean is the overall
            columns.append(Column(f"track:{track}", f"{track} mean", track, "track"))
    columns.append(Column("overall", "overall", "", "overall"))
    all_tasks = [n for names in track_tasks.values() for n in names]

    members_of = _rows_of_configurations(_configurations(runs))
    rows = []
    for members in members_of:
        cells: dict[str, Cell] = {}
        for config in members:
            for task in config.tasks:
                pairs = config.scores(task)
                if pairs:
                    cells[f"task:{task}"] = Cell([s for s, _ in pairs], [d for _, d in pairs])
        for track, names in track_tasks.items():
            cell = _mean_cell(members, names)
            if cell is not None:
                cells[f"track:{track}"] = cell
        overall = _mean_cell(members, all_tasks)
        if overall is not None:
            cells["overall"] = overall
        label, detail, from_folder = _label(members)
        rows.append(
            Row(
                label,
                "run",
                cells,
                detail,
                from_folder,
                seeds=max(len(m.runs) for m in members),
                coverage=sum(1 for k in cells if k.startswith("task:")),
                **_cost(members),
            )
        )
    _distinct_labels(rows, members_of)
    order_rows = sorted(
        range(len(rows)),
        key=lambda i: (-rows[i].coverage, -(rows[i].cells.get("overall") or Cell([-1.0])).mean),
    )
    rows = [rows[i] for i in order_rows]

    references = []
    for name, published in (baselines.get("encoders") or {}).items():
        cells = {
            f"task:{task}": Cell([float(v)])
            for task, v in (published.get("tasks") or {}).items()
            if task in tasks
        }
        for track, names in track_tasks.items():
            if track in (published.get("tracks") or {}):
                cells[f"track:{track}"] = Cell([float(published["tracks"][track])])
            elif names and all(f"task:{n}" in cells for n in names):
                cells[f"track:{track}"] = Cell(
                    [statistics.fmean(cells[f"task:{n}"].mean for n in names)]
                )
        if len(track_tasks) == 1:  # one track: its mean is the overall column
            (track,) = track_tasks
            if f"track:{track}" in cells:
                cells["overall"] = cells[f"track:{track}"]
        if cells:
            references.append(
                Row(f"{name} (published)", "baseline", cells, baselines.get("source", ""))
            )

    chance_cells = {
        f"task:{name}": Cell([float(task["chance"])])
        for name, (_, task) in tasks.items()
        if task.get("chance") is not None
    }
    for track, names in track_tasks.items():
        if all(f"task:{n}" in chance_cells for n in names):
            known = [
                {"score": chance_cells[f"task:{n}"].mean, "weight": tasks[n][1]["weight"]}
                for n in names
            ]
            chance_cells[f"track:{track}"] = Cell([_weighted_mean(known)])
    if all(f"task:{n}" in chance_cells for n in all_tasks):
        known = [
            {"score": chance_cells[f"task:{n}"].mean, "weight": tasks[n][1]["weight"]}
            for n in all_tasks
        ]
        chance_cells["overall"] = Cell([_weighted_mean(known)])
    chance = Row("chance", "chance", chance_cells) if chance_cells else None

    best = {}
    for column in columns:
        values = [r.cells[column.key].mean for r in [*rows, *references] if column.key in r.cells]
        if values:
            best[column.key] = max(values)
    return Leaderboard(columns, rows, references, chance, best, baselines.get("source", ""))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_context(board: Leaderboard, out: Path) -> dict[str, Any]:
    """What the templates show: formatted cells with relative links to the run directories."""

    def cell(row: Row, column: Column) -> dict[str, Any]:
        found = row.cells.get(column.key)
        if found is None:
            return {"text": "–", "spread": None, "n": None, "href": None, "title": ""} | {
                "combined": False,
                "partial": False,
                "best": False,
            }
        link = os.path.relpath(found.runs[0], out) if found.runs and column.kind == "task" else None
        spread = found.spread
        per_seed = row.kind == "run" and not (found.combined or found.partial)
        return {
            "text": _fmt(found.mean),
            "spread": None if spread is None else f"{spread:.3f}",
            # n is in the row's seeds column; a cell repeats it only where it differs.
            "n": found.n if per_seed and found.n != row.seeds else None,
            "href": link and quote(link),
            "title": "\n".join(os.path.relpath(r, out) for r in found.runs),
            "combined": found.combined,
            "partial": found.partial,
            "best": row.kind != "chance" and board.is_best(row, column),
        }

    def rows(rs: Iterable[Row]) -> list[dict[str, Any]]:
        return [
            {
                "label": r.label,
                "kind": r.kind,
                "detail": r.detail,
                "from_folder": r.from_folder,
                "seeds": r.seeds,
                "cells": [cell(r, c) for c in board.columns],
            }
            for r in rs
        ]

    return {
        "tracks": board.tracks,
        "columns": board.columns,
        "rows": rows(board.rows),
        "references": rows(board.references),
        "chance": rows([board.chance])[0] if board.chance else None,
        "source": board.source,
        "spread": SPREAD,
        "from_folder": FROM_FOLDER,
        "any_from_folder": any(r.from_folder for r in board.rows),
        "any_combined": any(c.combined for r in board.rows for c in r.cells.values()),
        "partial": PARTIAL,
        "any_partial": any(c.partial for r in board.rows for c in r.cells.values()),
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
    if cell.get("spread"):
        text += f" ± {cell['spread']}"
    if cell.get("n"):
        text += f" (n={cell['n']})"
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

    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    shown = [
        {
            "file": path.name,
            "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(),
            "caption": caption,
        }
        for path, caption in plots
    ]
    context = render_context(board, out)
    columns = board.columns
    context.update(
        runs=runs,
        sources=sources or "the given folders",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        plots=shown,
        skipped=list(skipped),
        first_of_track=[
            c.kind == "overall" or i == 0 or columns[i - 1].track != c.track
            for i, c in enumerate(columns)
        ],
    )
    written = {}
    for name in ("leaderboard.md", "leaderboard.html"):
        html = name.endswith(".html")
        # Markdown is line-oriented: its template keeps every newline it writes.
        env = Environment(
            loader=FileSystemLoader(ASSETS),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=StrictUndefined,
            trim_blocks=html,
            lstrip_blocks=html,
        )
        env.globals["md"] = _markdown_cell
        env.filters["mdtext"] = _markdown_text
        path = out / name
        path.write_text(env.get_template(f"{name}.j2").render(**context))
        written[name] = path
    return written
