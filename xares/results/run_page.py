"""``report.html`` in a run directory: one offline page with the run's scores and the
per-class diagnosis of its classification test sets (pictures embedded as PNG data URIs).

The page is made from the run directory's files alone (``scores.json`` and the
``predictions_<task>.csv`` files), so it can be written again for any run:
``python -m xares.report --run-pages RUN_OR_SWEEP_DIR ...``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from xares.atomic import write_text
from xares.layout import RUN_PAGE, SCORES_JSON, predictions_file
from xares.protocol.comparability import AGAINST
from xares.results.diagnosis import confusion_matrix, diagnose
from xares.results.scores import (
    _fmt,
    format_efficiency,
    interval_label,
    read_predictions,
    score_files,
)
from xares.results.templates import environment

log = logging.getLogger(__name__)

PAGE = RUN_PAGE
# Beyond this many classes a picture has unreadable ticks; the tables stay.
MAX_PICTURE_CLASSES = 50
# Cell counts are written in the matrix up to this many classes.
MAX_ANNOTATED_CLASSES = 20


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, bbox_inches="tight", format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def confusion_picture(labels: Sequence[str], matrix: np.ndarray, title: str) -> str:
    """The confusion matrix as a PNG data URI: each row's shares as colour, counts written in
    when there are few classes; the last column holds the answers that are no label."""
    from matplotlib.figure import Figure

    n = len(labels)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(14.0, max(4.5, 0.32 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n + 1), [*labels, "(no label)"], rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("answer")
    ax.set_ylabel("reference")
    ax.axvline(n - 0.5, color="#8c959f", linewidth=1)
    ax.set_title(title, fontsize=10)
    if n <= MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if shares[i, j] > 0.6 else "#1f2328"
                size = 9 if n <= 10 else 7
                ax.text(j, i, str(count), ha="center", va="center", fontsize=size, color=colour)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the reference's pairs")
    return _png(fig)


def ap_picture(per_class: Mapping[str, Mapping[str, Any]], title: str) -> str:
    """Per-class AP as horizontal bars, worst at the top, as a PNG data URI."""
    from matplotlib.figure import Figure

    ranked = sorted(per_class.items(), key=lambda item: (item[1]["ap"], item[0]))
    fig = Figure(figsize=(7.5, max(2.0, 0.24 * len(ranked) + 1.0)), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(ranked)), [c["ap"] for _, c in ranked], color="#4c78a8")
    ax.set_yticks(range(len(ranked)), [label for label, _ in ranked], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", color="#d0d7de", linewidth=0.6)
    ax.set_axisbelow(True)
    return _png(fig)


def _number(value: Any) -> str:
    """A score as the tables print it; ``None`` (JSON for NaN) as ``n/a``."""
    return _fmt(float("nan") if value is None else float(value))


def _interval(value: Any) -> str:
    if isinstance(value, Sequence) and len(value) == 2 and all(v is not None for v in value):
        return f"[{float(value[0]):.4f}, {float(value[1]):.4f}]"
    return ""


def _score_rows(summary: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    tasks = [
        {
            "task": t["task"],
            "metric": t["metric"],
            "score": _number(t.get("score")),
            "interval": _interval(t.get("interval")),
            "weight": _fmt(float(t["weight"])),
            "chance": _fmt(t.get("chance")),
            "clips": t.get("clips", ""),
            "note": "; ".join(
                [
                    *([t["note"]] if t.get("note") else []),
                    *(f"{n} dropped ({why})" for why, n in (t.get("dropped") or {}).items()),
                ]
            ),
            "anchor": f"set-{t['task']}" if t.get("diagnosis") else None,
        }
        for t in summary["tasks"]
    ]
    intervals = summary.get("tracks_interval") or {}
    means = [
        {
            "label": f"mean {track}",
            "score": _number(score),
            "interval": _interval(intervals.get(track)),
        }
        for track, score in (summary.get("tracks") or {}).items()
    ]
    label = "overall (weighted)"
    if summary.get("partial"):
        label = f"overall (PARTIAL: without {', '.join(summary.get('unscored') or [])})"
    means.append(
        {
            "label": label,
            "score": _number(summary.get("overall")),
            "interval": _interval(summary.get("overall_interval")),
        }
    )
    return tasks, means


def _table(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-class rows, worst first."""
    key = "ap" if block["metric"] == "mAP" else "accuracy"
    rows = [
        {"label": label, **numbers, "value": numbers[key]}
        for label, numbers in block["per_class"].items()
    ]
    return sorted(rows, key=lambda r: (r["value"] if r["value"] is not None else -1, r["label"]))


def _set_section(run_dir: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows for one classification set: its diagnosis (from ``scores.json``,
    or computed from its predictions file) and its picture."""
    name, metric = entry["task"], entry["metric"]
    path = run_dir / predictions_file(name)
    rows = read_predictions(path) if path.is_file() else None
    block = entry.get("diagnosis")
    notes = []
    if block is None and rows:
        block = diagnose(rows, metric)
        notes.append(
            f"computed from {path.name}: scores.json has no diagnosis"
            + (
                " (mAP columns: the labels seen, not the task file's num_classes)"
                if metric == "mAP"
                else ""
            )
        )
    if block is None:
        return {
            "task": name,
            "metric": metric,
            "block": None,
            "missing": f"no diagnosis and no {path.name}",
        }
    picture, why = None, ""
    title = f"{name} ({block['labels']} classes)"
    if block["labels"] > MAX_PICTURE_CLASSES:
        why = f"no picture: more than {MAX_PICTURE_CLASSES} classes"
    elif metric == "mAP":
        picture = ap_picture(block["per_class"], title)
    elif rows:
        picture = confusion_picture(*confusion_matrix(rows), title)
    else:
        why = f"no confusion matrix: {path.name} is missing"
    validity = block["validity"]
    return {
        "task": name,
        "metric": metric,
        "missing": "",
        "block": block,
        "classes": _table(block),
        "few": block["labels"] <= MAX_PICTURE_CLASSES,
        "validity": [
            {
                "kind": kind.replace("_", " "),
                "count": validity[kind],
                "share": validity["shares"][kind],
            }
            for kind in ("valid", "empty", "label_with_other_words", "other")
        ],
        "picture": picture,
        "why": why,
        "notes": notes,
    }


def page_context(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    tasks, means = _score_rows(summary)
    info = summary.get("run") or {}
    verdict = summary.get("comparability")
    return {
        "title": summary.get("run_name") or run_dir.name,
        "info": {k: info[k] for k in ("encoder", "task", "llm", "projector", "seed") if k in info},
        "run_dir": str(run_dir),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tasks": tasks,
        "means": means,
        "any_interval": any(r["interval"] for r in [*tasks, *means]),
        "interval_label": interval_label(summary) or "interval",
        "verdict": None
        if not isinstance(verdict, Mapping)
        else {
            "comparable": bool(verdict.get("comparable")),
            "against": verdict.get("against", AGAINST),
            "reasons": [r.get("text", "") for r in verdict.get("reasons") or []],
        },
        "efficiency": format_efficiency(summary["efficiency"])[1:]
        if summary.get("efficiency")
        else [],
        "sets": [
            _set_section(run_dir, t)
            for t in summary["tasks"]
            if t["metric"] in ("Accuracy", "mAP") and t.get("clips")
        ],
    }


def _percent(value: float | None) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f}%"
    )


def write_run_page(run_dir: str | Path) -> Path:
    """Write ``report.html`` into ``run_dir`` from its ``scores.json`` and predictions files."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / SCORES_JSON).read_text())
    env = environment(html=True)
    env.filters["percent"] = _percent
    env.filters["num"] = _number
    path = run_dir / PAGE
    write_text(path, env.get_template(f"{PAGE}.j2").render(**page_context(run_dir, summary)))
    return path


def write_run_pages(paths: Sequence[str | Path]) -> list[Path]:
    """``report.html`` in every run directory at or below ``paths``."""
    return [write_run_page(file.parent) for file in score_files(paths)]
