"""How long the bootstrap intervals of a full challenge run take (``attach_intervals``).

Twenty test sets shaped like the challenge's (the Track A and Track B sets of ``task=all``,
their metrics, mAP's 200 FSD50K columns, transcripts of about twenty words, captions with
per-pair scores as FENSE and DATE keep them), with answers drawn at random. The clip counts
are the public test splits' sizes, rounded; ASVspoof 2015's evaluation set is larger still, so
its 20 000 is a lower bound. Prints the time per phase: taking the sets apart (what the
metrics do once) and drawing the replicates.

    python experiments/bench_intervals.py [--resamples 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xares.metrics import build_metric  # noqa: E402
from xares.results.intervals import IntervalSettings, attach_intervals  # noqa: E402
from xares.results.scores import summarise  # noqa: E402

# (name, metric, clips, references per clip, track)
SETS = [
    ("esc50", "Accuracy", 400, 1, "A"),
    ("speechcommands", "Accuracy", 3_100, 1, "A"),
    ("fluentspeech", "Accuracy", 3_800, 1, "A"),
    ("fsdkaggle2018", "Accuracy", 1_600, 1, "A"),
    ("voxceleb1", "Accuracy", 4_900, 1, "A"),
    ("nsynth", "Accuracy", 4_100, 1, "A"),
    ("cremad", "Accuracy", 1_500, 1, "A"),
    ("asvspoof2015", "Accuracy", 20_000, 1, "A"),
    ("fma", "Accuracy", 800, 1, "A"),
    ("fsd50k", "mAP", 10_200, 1, "A"),
    ("urbansound8k", "Accuracy", 840, 1, "A"),
    ("gtzan", "Accuracy", 290, 1, "A"),
    ("vocalsound", "Accuracy", 3_600, 1, "A"),
    ("libricount", "Accuracy", 1_100, 1, "A"),
    ("voxlingua33", "Accuracy", 1_600, 1, "A"),
    ("aishell1", "iCER", 7_200, 1, "B"),
    ("songdescriber", "FENSE", 700, 1, "B"),
    ("clotho", "FENSE", 1_050, 5, "B"),
    ("librispeech", "iWER", 2_600, 1, "B"),
    ("mecat", "DATE", 5_000, 1, "B"),
]
WORDS = [f"w{i}" for i in range(500)]
CHARS = [chr(0x4E00 + i) for i in range(300)]


def answers(metric: str, clips: int, refs: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for i in range(clips):
        if metric == "Accuracy":
            label = f"class{rng.integers(0, 20)}"
            references = [label]
            prediction = label if rng.random() < 0.7 else f"class{rng.integers(0, 20)}"
        elif metric == "mAP":
            labels = sorted({f"tag{t}" for t in rng.integers(0, 200, rng.integers(1, 4))})
            references = [";".join(labels)]
            kept = [t for t in labels if rng.random() < 0.6]
            prediction = ";".join(kept + [f"tag{rng.integers(0, 200)}"] * int(rng.random() < 0.3))
        elif metric in ("iWER", "iCER"):
            units = WORDS if metric == "iWER" else CHARS
            sep = " " if metric == "iWER" else ""
            text = [str(u) for u in rng.choice(units, 20)]
            hyp = [u if rng.random() < 0.85 else str(rng.choice(units)) for u in text]
            references, prediction = [sep.join(text)], sep.join(hyp)
        else:  # FENSE / DATE: the per-pair scores the predictions file keeps
            references = [f"caption {i} {k}" for k in range(refs)]
            prediction = f"generated caption {i}"
        row = {"key": f"{i:06d}", "prompt": "", "prediction": prediction, "references": references}
        if metric in ("FENSE", "DATE"):
            row["pair_scores"] = rng.uniform(0.2, 0.8, len(references)).tolist()
        rows.append(row)
    return rows


def scored_set(name: str, metric: str, rows: list[dict], track: str) -> dict:
    """One test set's result as the evaluation hands it on, scored by its metric."""
    args = {"num_classes": 200} if metric == "mAP" else {}
    if metric in ("FENSE", "DATE"):
        score = float(np.mean([v for r in rows for v in r["pair_scores"]]))
    else:
        preds = [r["prediction"] for r in rows for _ in r["references"]]
        score = build_metric(metric, args)(preds, [x for r in rows for x in r["references"]])
    return {
        "task": f"eval_{name}",
        "metric": metric,
        "metric_args": args,
        "weight": 1.0,
        "track": track,
        "clips": len(rows),
        "dropped": {},
        "rows": rows,
        "score": score,
        "note": "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = [
        scored_set(name, metric, answers(metric, clips, refs, rng), track)
        for name, metric, clips, refs, track in SETS
    ]
    clips = sum(r["clips"] for r in results)
    print(f"{len(results)} test sets, {clips} clips, {args.resamples} resamples")
    summary = summarise(results)
    started = time.perf_counter()
    attach_intervals(summary, results, IntervalSettings(resamples=args.resamples))
    seconds = time.perf_counter() - started
    for task in summary["tasks"]:
        low, high = task["interval"]
        print(
            f"  {task['task']:<22} {task['metric']:<8} {task['score']:.4f}  [{low:.4f}, {high:.4f}]"
        )
    low, high = summary["overall_interval"]
    print(f"  {'overall':<22} {'':<8} {summary['overall']:.4f}  [{low:.4f}, {high:.4f}]")
    print(f"\nintervals of the whole run: {seconds:.2f} s (statistics and replicates together)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
