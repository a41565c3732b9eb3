"""``python -m xares.report``: the leaderboard of every run below some folders, on the terminal
and as files (markdown, HTML, plots)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xares.results import leaderboard, plots
from xares.results.namesakes import separate_namesakes
from xares.results.run_page import write_run_pages
from xares.results.scores import _fmt, _render, collect


def compare_table(runs: Sequence[Mapping[str, Any]], baseline: str | None = None) -> str:
    """Side-by-side scores of several runs (one column each), with chance and a difference.

    ``baseline`` names the run (encoder) the first run is compared against in the last column.
    """
    names = [r["encoder"] for r in runs]
    tasks = [t["task"] for t in runs[0]["tasks"]]
    by_run = [{t["task"]: t for t in r["tasks"]} for r in runs]
    header = ["task", "metric", "chance", *names]
    diff = baseline is not None and baseline in names and len(names) > 1
    if diff:
        header.append(f"{names[0]} - {baseline}")
        base_index = names.index(baseline)

    def score(run: Mapping, task: str) -> float:
        value = run.get(task, {}).get("score")
        return float("nan") if value is None else float(value)

    lines = []
    for task in tasks:
        first = by_run[0][task]
        row = [
            task,
            first["metric"],
            _fmt(first.get("chance")),
            *(_fmt(score(r, task)) for r in by_run),
        ]
        if diff:
            row.append(f"{score(by_run[0], task) - score(by_run[base_index], task):+.4f}")
        lines.append(row)
    overall = [
        "overall",
        "",
        "",
        *(_fmt(float(r["overall"]) if r["overall"] is not None else float("nan")) for r in runs),
    ]
    if diff:
        a, b = runs[0]["overall"], runs[base_index]["overall"]
        overall.append(f"{a - b:+.4f}" if a is not None and b is not None else "n/a")
    return _render(header, lines, [overall])


def terminal_leaderboard(runs: Sequence[Mapping[str, Any]]) -> str:
    """One table per set of test sets: the ``runs`` (from :func:`collect`), best overall first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    separated, notes = separate_namesakes(runs)
    for run in separated:  # copies: the labels below are for this table only
        key = ",".join(t["task"] for t in run["tasks"])  # runs are comparable on the same test sets
        groups.setdefault(key, []).append(run)
    tables = []
    for runs in groups.values():
        runs.sort(key=lambda r: -(r["overall"] if r["overall"] is not None else -1.0))
        # Columns carry a short label and a number; the legend under the table says which run
        # each is and why it is not comparable, so the table stays as wide as its numbers.
        legend: list[str] = []
        for number, run in enumerate(runs, 1):
            seed = (run.get("run") or {}).get("seed")
            where = Path(run["run_dir"]).name + (f", seed {seed}" if seed is not None else "")
            if run["from_folder"]:
                where += ", name from folder"
            where += _comparability_label(run.get("comparability"))
            legend.append(f"  [{number}] {run['encoder']}: {where}")
            run["encoder"] = f"{run['encoder']} [{number}]"
        tables.append(
            f"task: {runs[0]['task_name']}  ({len(runs)} runs)\n"
            + compare_table(runs)
            + "\n"
            + "\n".join(legend)
        )
    return "\n\n".join([*tables, *(f"note: {note}" for note in notes)])


def _comparability_label(block: Mapping[str, Any] | None) -> str:
    """What the terminal leaderboard says after a run's folder: why it is not comparable."""
    if not isinstance(block, Mapping):
        return ", comparability not checked"
    if block.get("comparable"):
        return ""
    return ", NOT comparable: " + ", ".join(r.get("code", "?") for r in block.get("reasons") or [])


def write_leaderboard(
    runs: Sequence[dict[str, Any]], out: str | Path, sources: str = ""
) -> dict[str, Path]:
    """The leaderboard files of ``runs`` in ``out``: markdown, HTML and the PNG plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard.build(runs)
    written, shown, skipped = {}, [], []
    for name, draw, caption in plots.PLOTS:
        path = draw(board, out / name)
        if path is None:
            skipped.append(f"{name} not written: {plots.REASONS[draw.__name__]}.")
        else:
            written[name] = path
            shown.append((path, caption))
    written |= leaderboard.write(board, out, shown, skipped, runs=len(runs), sources=sources)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Leaderboard of the runs under the given folders: a table printed, and "
        "leaderboard.md, leaderboard.html and PNG plots written to --out."
    )
    parser.add_argument("paths", nargs="*", default=["outputs"], help="run or sweep folders")
    parser.add_argument("--out", default="outputs/report", help="folder for the leaderboard files")
    parser.add_argument(
        "--run-pages",
        action="store_true",
        help="instead, write report.html (scores and per-class diagnosis) into each run directory",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.run_pages:
        pages = write_run_pages(args.paths)
        print("\n".join(map(str, pages)) or f"no scores.json under {', '.join(args.paths)}")
        return 0 if pages else 1
    runs = collect(args.paths)
    if not runs:
        print(f"no readable scores.json under {', '.join(args.paths)}")
        return 1
    print(terminal_leaderboard(runs))
    written = write_leaderboard(runs, args.out, sources=", ".join(map(str, args.paths)))
    print(f"\nwrote {', '.join(sorted(written))} to {args.out}/")
    return 0
