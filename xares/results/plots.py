"""Leaderboard plots (matplotlib, Agg canvas: no display needed)."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from xares.atomic import atomic_path
from xares.results.leaderboard import Column, Leaderboard, Row

log = logging.getLogger(__name__)

REASONS = {
    "scores_by_task": "no run has a score",
    "score_vs_cost": "no run has an efficiency block with the encoder's parameters or the "
    "training time in its scores.json (runs from before the Efficiency callback, or with "
    "callbacks.efficiency=null)",
}
TIME_UNITS = (("hours", 3600.0), ("minutes", 60.0), ("seconds", 1.0))
# Wide enough for 15 test sets of a track, small enough to read without zooming.
MAX_WIDTH_IN = 22.0


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def scores_by_task(board: Leaderboard, path: Path) -> Path | None:
    """Grouped bars: one panel per track, one group per test set (and the track mean), one bar
    per encoder; published baselines hatched, ± spread as error bars, chance as a black tick,
    the results page's entries as a grey range (lowest to highest) with their median."""
    series: list[Row] = [*board.rows, *(r for r in board.references if r.kind == "baseline")]
    entries = [r for r in board.references if r.kind == "reference"]
    tracks = panels(board)
    if not series or not tracks:
        log.info("%s not written: %s", path.name, REASONS["scores_by_task"])
        return None
    widest = max(len(cols) for _, cols in tracks)
    group = 0.18 * len(series) + 0.5
    width = min(MAX_WIDTH_IN, max(8.0, group * widest + 2.5))
    fig = Figure(figsize=(width, 3.6 * len(tracks) + 0.8), layout="constrained")
    axes = fig.subplots(len(tracks), 1, squeeze=False)[:, 0]
    colours = _colours(len(board.rows))
    hatches = ["///", "\\\\\\", "xxx", "...", "ooo"]
    for ax, (track, columns) in zip(axes, tracks):
        _entry_ranges(ax, entries, columns)
        # Only the rows with a score in this track take a slot, so no group has gaps.
        present = [
            (i, row) for i, row in enumerate(series) if any(c.key in row.cells for c in columns)
        ]
        bar = 0.8 / max(1, len(present))
        for slot, (i, row) in enumerate(present):
            xs, heights, errors = [], [], []
            for j, column in enumerate(columns):
                cell = row.cells.get(column.key)
                if cell is not None:
                    xs.append(j - 0.4 + bar * (slot + 0.5))
                    heights.append(cell.mean)
                    errors.append(cell.spread or 0.0)
            reference = row.kind == "baseline"
            ax.bar(
                xs,
                heights,
                bar,
                yerr=errors if any(errors) else None,
                capsize=2,
                label=row.display,
                color="white" if reference else colours[i],
                edgecolor="0.3" if reference else colours[i],
                hatch=hatches[(i - len(board.rows)) % len(hatches)] if reference else None,
                linewidth=0.8,
            )
        if any(c.kind != "task" for c in columns) and len(columns) > 1:
            ax.axvline(len(columns) - 1.5, color="0.5", linestyle=":", linewidth=1)
        _chance_ticks(ax, board.chance, columns)
        ax.set_xticks(range(len(columns)), [_tick(c) for c in columns], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(columns) - 0.4)
        # FENSE can be negative: the axis goes below 0 only when some bar does.
        lowest = min(
            [0.0]
            + [
                r.cells[c.key].mean
                for r in [*series, *entries]
                for c in columns
                if c.key in r.cells
            ]
        )
        ax.set_ylim(min(0.0, lowest - 0.05), 1)
        ax.set_ylabel("score")
        ax.set_title(_panel_title(track, columns), loc="left", fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 5), frameon=False)
    return _save(fig, path)


def _panel_title(track: str, columns: list[Column]) -> str:
    name = next((c.subtitle for c in columns if c.kind == "track" and c.subtitle), "")
    return f"{track} ({name})" if name else track


def _entry_ranges(ax, entries: list[Row], columns: list[Column]) -> None:
    """The spread of the results page's entries behind each group: where a run would rank."""
    drawn = False
    for j, column in enumerate(columns):
        values = sorted(r.cells[column.key].mean for r in entries if column.key in r.cells)
        if not values:
            continue
        label = None if drawn else f"challenge entries (n={len(entries)}): range, median"
        ax.bar(
            j, values[-1] - values[0], 0.9, bottom=values[0], color="0.92", zorder=0, label=label
        )
        median = statistics.median(values)
        ax.hlines(median, j - 0.45, j + 0.45, colors="0.55", linewidth=1.5, zorder=0)
        drawn = True


def panels(board: Leaderboard) -> list[tuple[str, list[Column]]]:
    """A panel per track: its test sets, then its mean."""
    return board.tracks


def _tick(column: Column) -> str:
    return column.title if column.kind == "task" else f"{column.title}"


def _chance_ticks(ax, chance: Row | None, columns: list[Column]) -> None:
    if chance is None:
        return
    drawn = False
    for j, column in enumerate(columns):
        cell = chance.cells.get(column.key)
        if cell is not None:
            ax.hlines(
                cell.mean,
                j - 0.45,
                j + 0.45,
                colors="black",
                linestyles="--",
                linewidth=1.2,
                label=None if drawn else "chance",
            )
            drawn = True


def score_vs_cost(board: Leaderboard, path: Path) -> Path | None:
    """The summary score (xares' overall, or a lone track's mean) against encoder parameters
    and against training time, where known."""
    summary = board.summary.key if board.summary else ""
    # Parameters span orders of magnitude (log axis, 20M not 2e7); time in a unit that reads.
    longest = max((r.train_seconds or 0.0) for r in board.rows) if board.rows else 0.0
    unit, per_unit = next((u, s) for u, s in TIME_UNITS if longest >= 2 * s or s == 1)
    axes_spec = [
        ("log", "encoder parameters", lambda r: r.parameters),
        (
            "linear",
            f"training time ({unit})",
            lambda r: r.train_seconds and r.train_seconds / per_unit,
        ),
    ]
    panels = [
        (name, label, get)
        for name, label, get in axes_spec
        if any(get(r) and summary in r.cells for r in board.rows)
    ]
    if not panels:
        log.info("%s not written: %s", path.name, REASONS["score_vs_cost"])
        return None
    fig = Figure(figsize=(6.5 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _colours(len(board.rows))
    for ax, (xscale, label, get) in zip(axes, panels):
        for colour, row in zip(colours, board.rows):
            x, cell = get(row), row.cells.get(summary)
            if not x or cell is None:
                continue
            ax.errorbar(
                x, cell.mean, yerr=cell.spread, fmt="o", color=colour, capsize=3, markersize=7
            )
            ax.annotate(
                row.display, (x, cell.mean), textcoords="offset points", xytext=(6, 4), fontsize=9
            )
        ax.set_xscale(xscale)
        if xscale == "log":
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel(_summary_label(board))
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("score versus cost", fontweight="bold")
    return _save(fig, path)


def _summary_label(board: Leaderboard) -> str:
    column = board.summary
    if column is None or column.kind == "overall":
        return "overall score (xares, all tracks)"
    return f"{column.title} ({column.subtitle})" if column.subtitle else column.title


PLOTS = (
    (
        "scores_by_task.png",
        scores_by_task,
        "Scores per test set, one panel per track (hatched: published baselines; grey: the "
        "range of the challenge's entries, line at their median; error bars: ± spread over "
        "seeds; dashed: chance). Labels carry the table's comparability marks.",
    ),
    (
        "score_vs_cost.png",
        score_vs_cost,
        "The overall score (xares, all tracks; with one track, its mean) against the "
        "encoder's parameters and the training time, from the efficiency block of scores.json.",
    ),
)
