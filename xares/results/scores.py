"""Score files and tables: ``scores.tsv``, ``scores.json``, ``predictions_<task>.csv``."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xares.atomic import atomic_open
from xares.layout import SCORES_JSON, SCORES_TSV, SKIPPED, predictions_file
from xares.protocol.comparability import format_verdict

log = logging.getLogger(__name__)


def weighted_mean(results: Iterable[Mapping[str, Any]]) -> float:
    """Weighted mean over the tasks that have a score (unavailable metrics are left out)."""
    pairs = [(r["score"], r["weight"]) for r in results if not math.isnan(r["score"])]
    total = sum(w for _, w in pairs)
    return sum(s * w for s, w in pairs) / total if total > 0 else float("nan")


def summarise(
    results: Sequence[Mapping[str, Any]], efficiency: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Per-task scores, a mean per track (when tasks name one) and the overall weighted mean.

    ``partial`` is true when some test set has no score (no scorable samples, or a metric
    that could not run): the overall is then the mean of the others, and ``overall_weight``
    the weight it was taken over. ``efficiency`` (what the run cost, see
    :class:`xares.training.callbacks.Efficiency`) is kept under that key when given.
    """
    tracks: dict[str, list] = {}
    for r in results:
        if r.get("track"):
            tracks.setdefault(r["track"], []).append(r)
    fields = (
        "task",
        "metric",
        "score",
        "weight",
        "chance",
        "track",
        "set_id",
        "metric_args",
        "clips",
        "dropped",
        "note",
    )
    scored = [r for r in results if not math.isnan(r["score"])]
    summary = {
        "tasks": [{k: r.get(k) for k in fields} for r in results],
        "tracks": {name: weighted_mean(rs) for name, rs in tracks.items()}
        if len(tracks) > 1
        else {},
        "overall": weighted_mean(results),
        "overall_weight": sum(float(r["weight"]) for r in scored),
        "partial": len(scored) < len(results),
        "unscored": [r["task"] for r in results if math.isnan(r["score"])],
    }
    if efficiency is not None:
        summary["efficiency"] = dict(efficiency)
    return summary


def overall_score(summary: Mapping[str, Any] | None) -> float | None:
    """The overall a run returns (to a sweeper): ``None`` when nothing was scored, where
    :func:`summarise` has NaN, so a sweep never ranks a run by a missing score."""
    value = (summary or {}).get("overall")
    return float(value) if value is not None and math.isfinite(value) else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _render(header: list[str], body: list[list[str]], footer: list[list[str]]) -> str:
    """Left-aligned columns, a rule under the header and another above the footer rows."""
    widths = [max(len(row[i]) for row in [header, *body, *footer]) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths))

    return "\n".join([line(header), rule, *map(line, body), rule, *map(line, footer)])


def interval_text(interval: Sequence[float] | None) -> str:
    return "-" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def interval_label(summary: Mapping[str, Any]) -> str | None:
    """The interval column's heading (``95% CI``), or ``None`` when the run has no intervals."""
    block = summary.get("intervals") or {}
    if not block.get("resamples"):
        return None
    return f"{float(block['level']) * 100:g}% CI"


def format_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width table: task, metric, score (with its interval), weight, chance, clips."""
    tasks = summary["tasks"]
    with_chance = any(t.get("chance") is not None for t in tasks)
    ci = interval_label(summary)
    header = [
        "task",
        "metric",
        "score",
        *([ci] if ci else []),
        "weight",
        *(["chance"] if with_chance else []),
        "clips",
    ]
    lines = [
        [
            t["task"],
            t["metric"],
            _fmt(t["score"]),
            *([interval_text(t.get("interval"))] if ci else []),
            _fmt(float(t["weight"])),
            *([_fmt(t.get("chance"))] if with_chance else []),
            str(t.get("clips", "")),
        ]
        for t in tasks
    ]
    blank = [""] if with_chance else []

    def total(label: str, score: float, interval: Sequence[float] | None) -> list[str]:
        return [label, "", _fmt(score), *([interval_text(interval)] if ci else []), "", *blank, ""]

    tracks_interval = summary.get("tracks_interval") or {}
    footer = [
        total(f"mean {track}", score, tracks_interval.get(track))
        for track, score in summary.get("tracks", {}).items()
    ]
    label = "overall (weighted)"
    if summary.get("partial"):
        label = f"overall (PARTIAL: without {', '.join(summary['unscored'])})"
    footer.append(total(label, summary["overall"], summary.get("overall_interval")))
    notes = [f"  {t['task']}: {t['note']}" for t in tasks if t.get("note")]
    notes += [
        f"  {t['task']}: dropped "
        + ", ".join(f"{n} ({why})" for why, n in t["dropped"].items())
        + f", each listed in {SKIPPED_FILE}"
        for t in tasks
        if t.get("dropped")
    ]
    if summary.get("skipped_steps"):
        notes.append(
            f"  training: {summary['skipped_steps']} step(s) skipped for a non-finite loss "
            "(not counted in max_steps; the schedule waited)"
        )
    efficiency = format_efficiency(summary["efficiency"]) if summary.get("efficiency") else []
    verdict = ["", format_verdict(summary["comparability"])] if "comparability" in summary else []
    return "\n".join([_render(header, lines, footer), *notes, *efficiency, *verdict])


def _count(n: int) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def format_efficiency(block: Mapping[str, Any]) -> list[str]:
    """A few readable lines for the ``efficiency`` block, printed under the score table."""
    where = block.get("device", "?")
    if (block.get("world_size") or 1) > 1:
        where += f"; rank {block.get('rank', 0)}'s numbers, of {block['world_size']} ranks"
    lines = ["", f"efficiency ({where})"]
    encoder = block.get("encoder")
    if encoder:
        rate = encoder.get("frames_per_second")
        rtf = encoder.get("real_time_factor")
        lines.append(
            f"  encoder  {encoder['name']}, {_count(encoder['parameters'])} parameters, "
            + (f"{rate:g} frames/s, " if rate is not None else "")
            + (f"real-time factor {rtf:.3g}" if rtf is not None else "real-time factor -")
            + f" ({encoder['calls']} encoder calls, {encoder.get('audio_seconds') or 0:.1f} s "
            f"of audio in {encoder.get('seconds') or 0:.2f} s)"
        )
    train = block.get("train")
    if train:
        rate = train.get("samples_per_sec")
        wait = train.get("data_wait_percent")
        lines.append(
            "  train    "
            + (f"{rate:.1f} samples/s" if rate is not None else "- samples/s")
            + f" after a {train.get('warmup_seconds') or 0:.2f} s first step"
            + (f", {wait:.1f}% waiting for data" if wait is not None else "")
            + f" ({train['steps']} steps, {train['samples']} samples)"
        )
    evaluation = block.get("eval")
    if evaluation:
        rate = evaluation.get("clips_per_sec")
        lines.append(
            "  eval     "
            + (f"{rate:.1f} clips/s" if rate is not None else "- clips/s")
            + f" ({evaluation['clips']} clips in {_seconds(evaluation.get('loop_seconds'))}"
            " of test loop)"
        )
    if block.get("peak_memory_mb") is not None:
        lines.append(
            f"  memory   {block['peak_memory_mb']:.0f} MB peak ({block.get('peak_memory_kind')})"
        )
    seconds = block.get("seconds") or {}
    phases = [
        f"{name} {_seconds(seconds[name])}"
        for name in ("setup", "train", "eval", "total")
        if seconds.get(name) is not None
    ]
    if phases:
        lines.append(f"  time     {', '.join(phases)}")
    return lines


def _skips(dropped: Mapping[str, int] | None) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in (dropped or {}).items())


def write_reports(
    output_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    run_name: str | None = None,
    efficiency: Mapping[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the three kinds of score files into ``output_dir`` and return the summary."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarise(results, efficiency)
    if run_name:
        summary["run_name"] = run_name
    with atomic_open(out / SCORES_TSV, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(
            ["task", "metric", "score", "ci_low", "ci_high", "weight", "clips", "dropped"]
        )
        for t in summary["tasks"]:
            writer.writerow(
                [
                    t["task"],
                    t["metric"],
                    _fmt(t["score"]),
                    *_bounds(t.get("interval")),
                    t["weight"],
                    t["clips"],
                    _skips(t["dropped"]),
                ]
            )
        tracks_interval = summary.get("tracks_interval") or {}
        for track, score in summary["tracks"].items():
            bounds = _bounds(tracks_interval.get(track))
            writer.writerow([f"mean_{track}", "weighted_mean", _fmt(score), *bounds, "", "", ""])
        # The weight of the sets the mean was taken over: less than the total when partial.
        overall = "weighted_mean_partial" if summary["partial"] else "weighted_mean"
        writer.writerow(
            [
                "overall",
                overall,
                _fmt(summary["overall"]),
                *_bounds(summary.get("overall_interval")),
                summary["overall_weight"],
                "",
                "",
            ]
        )
    with atomic_open(out / SCORES_JSON, "w") as f:
        json.dump(_json_safe(summary), f, indent=2)
    for result in results:
        rows = result.get("rows", [])
        # FENSE and DATE keep each pair's score: intervals and comparisons read it back.
        kept = bool(rows) and all(r.get("pair_scores") is not None for r in rows)
        with atomic_open(out / predictions_file(result["task"]), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "prompt", "prediction", "reference", *(["pair_score"] * kept)])
            for row in rows:
                for i, reference in enumerate(row["references"]):
                    extra = [repr(float(row["pair_scores"][i]))] if kept else []
                    writer.writerow(
                        [row["key"], row["prompt"], row["prediction"], reference, *extra]
                    )
    return summary


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a predictions file, one per clip (its references together, in file order),
    as the evaluation keeps them: key, prompt, prediction, references (and pair_scores)."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        kept = "pair_score" in (reader.fieldnames or [])
        for line in reader:
            row = rows.setdefault(
                line["key"],
                {
                    "key": line["key"],
                    "prompt": line["prompt"],
                    "prediction": line["prediction"],
                    "references": [],
                    **({"pair_scores": []} if kept else {}),
                },
            )
            row["references"].append(line["reference"])
            if kept:
                row["pair_scores"].append(float(line["pair_score"]))
    return list(rows.values())


def _bounds(interval: Sequence[float] | None) -> list[str]:
    return [_fmt(float(v)) for v in interval] if interval else ["", ""]


SKIPPED_FILE = SKIPPED


def write_skipped(
    output_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    training: Iterable[tuple[tuple[str, str, str], Mapping[str, str]]] = (),
) -> Path | None:
    """Every clip the run left out, by phase, set, key, shard and reason, in ``skipped.tsv``
    (the log names only the first few of each reason); ``None`` when nothing was skipped."""
    lines = [
        ("train", task, clip["key"], clip["shard"], clip["reason"], clip["detail"])
        for (task, _, _), clip in sorted(training, key=lambda item: item[0])
    ]
    lines += [
        ("test", r["task"], c["key"], c["shard"], c["reason"], c["detail"])
        for r in results
        for c in r.get("skipped_clips") or []
    ]
    if not lines:
        return None
    path = Path(output_dir) / SKIPPED_FILE
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["phase", "set", "key", "shard", "reason", "detail"])
        writer.writerows(lines)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def load_run_scores(run_dir: str | Path) -> dict[str, Any]:
    """The ``scores.json`` of a run directory, with ``encoder``, ``task_name`` and ``run_dir``.

    Encoder and task come from the file's ``run`` block. A file written before that block
    existed falls back to the run name (``<encoder>__<task>``), and ``from_folder`` says so.
    """
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / SCORES_JSON).read_text())
    if not isinstance(summary, dict) or not isinstance(summary.get("tasks"), list):
        raise ValueError("it has no list of `tasks`")
    info = summary.get("run")
    if info:
        encoder, task = info["encoder"], info.get("task") or ""
    else:
        name = summary.get("run_name") or run_dir.parent.name
        encoder, _, task = name.partition("__")
    summary["encoder"], summary["task_name"], summary["run_dir"] = encoder, task, str(run_dir)
    summary["from_folder"] = not info
    return summary


def track_means(tasks: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The weighted mean of each track's scored test sets (also when there is only one track)."""
    tracks: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        if t.get("track"):
            score = float("nan") if t.get("score") is None else float(t["score"])
            tracks.setdefault(t["track"], []).append({"score": score, "weight": t["weight"]})
    return {name: weighted_mean(rs) for name, rs in tracks.items()}


def score_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every ``scores.json`` in the given run directories or anywhere below the given folders,
    each once: a folder given twice (``outputs`` and its absolute path) or inside another is
    not counted again."""
    files: dict[Path, Path] = {}
    for path in map(Path, paths):
        found = (
            [path / SCORES_JSON]
            if (path / SCORES_JSON).is_file()
            else sorted(path.rglob(SCORES_JSON))
        )
        for file in found:
            files.setdefault(file.resolve(), file)
    return list(files.values())


def collect(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every run below ``paths``, as :func:`load_run_scores` reads it.

    A ``scores.json`` that cannot be read (cut short, or not written by xares) is left out
    with a warning naming it, so one broken folder does not hide a sweep's other runs.
    """
    runs = []
    for file in score_files(paths):
        try:
            runs.append(load_run_scores(file.parent))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning(
                "skipped %s: not a readable xares scores.json (%s: %s). Re-score that run with "
                "`python -m xares.evaluate ckpt_path=%s`, or move the file away.",
                file,
                type(error).__name__,
                error,
                file.parent,
            )
    return runs
