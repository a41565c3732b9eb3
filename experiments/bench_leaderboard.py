"""How long ``make report`` takes on runs of the whole challenge: the ties' paired tests.

Writes ``--runs`` run directories of the twenty challenge-shaped test sets of
``bench_intervals.py`` (74 000 clips each), all on the same clips and references, their answers
differing from run to run, then builds the leaderboard of them, which pairs every column's best
with every other run (the ``≈`` marks). Prints the time to write the runs and to build the board.

    python experiments/bench_leaderboard.py [--runs 6]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_intervals import SETS, answers, scored_set  # noqa: E402

from xares.results import leaderboard  # noqa: E402
from xares.results.cli import collect  # noqa: E402
from xares.results.intervals import IntervalSettings, attach_intervals  # noqa: E402
from xares.results.scores import summarise, write_reports  # noqa: E402


def write_runs(root: Path, runs: int) -> None:
    rng = np.random.default_rng(0)
    base = [
        (name, metric, answers(metric, n, refs, rng), track)
        for name, metric, n, refs, track in SETS
    ]
    for k in range(runs):
        draw = np.random.default_rng(k + 1)
        results = []
        for name, metric, rows, track in base:
            rows = copy.deepcopy(rows)
            for row in rows:  # a tenth of the answers moved: runs close enough to tie somewhere
                if draw.random() < 0.1:
                    row["prediction"] = rows[int(draw.integers(0, len(rows)))]["prediction"]
                if "pair_scores" in row:
                    row["pair_scores"] = [
                        float(np.clip(v + draw.normal(0, 0.05), 0, 1)) for v in row["pair_scores"]
                    ]
            track_name = {"A": "task1", "B": "task2"}[track]
            results.append({**scored_set(name, metric, rows, track_name), "set_id": name})
        summary = summarise(results)
        attach_intervals(summary, results, IntervalSettings(resamples=100))
        summary["run"] = {
            "encoder": f"encoder{k}",
            "encoder_config": f"encoder{k}",
            "task": "all",
            "llm": "smollm2_135m",
            "projector": "linear",
            "seed": 1,
            "config_hash": f"config{k}",
            "model_hash": f"model{k}",
        }
        write_reports(root / f"encoder{k}", results, run_name=f"encoder{k}__all", summary=summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        started = time.perf_counter()
        write_runs(root, args.runs)
        written = time.perf_counter() - started
        started = time.perf_counter()
        board = leaderboard.build(collect([root]))
        built = time.perf_counter() - started
    ties = sum(cell.tied for row in board.rows for cell in row.cells.values())
    print(f"{args.runs} runs of {len(SETS)} test sets: written in {written:.1f} s")
    print(f"leaderboard built in {built:.1f} s ({ties} cells marked as ties with their best)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
