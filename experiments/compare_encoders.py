"""Train and score several encoders under the same budget and print their scores side by side.

Proof that the pipeline learns from the audio: the log-mel encoder must beat ``dummy``
(features that ignore the audio) by a wide margin on the classification tasks.

    python experiments/compare_encoders.py                       # mel vs dummy, experiment=demo
    python experiments/compare_encoders.py --encoders mel,dummy -- trainer.max_steps=100
    python experiments/compare_encoders.py --runs outputs/bench/<time>   # re-print a finished one
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xares.results.cli import compare_table  # noqa: E402
from xares.results.scores import load_run_scores  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", default="mel,dummy", help="comma-separated encoder options")
    parser.add_argument("--experiment", default="demo", help="experiment overlay for every run")
    parser.add_argument(
        "--runs", help="an existing sweep directory to summarise instead of training"
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every run (after --)"
    )
    args = parser.parse_args()

    if args.runs:
        sweep = Path(args.runs)
    else:
        sweep = ROOT / "outputs" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S")
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"experiment={args.experiment}",
            f"encoder={args.encoders}",
            f"hydra.sweep.dir={sweep}",
            *args.overrides,
        ]
        print("running:", " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"\nsweep finished in {time.perf_counter() - started:.0f} s", flush=True)

    runs = [load_run_scores(p) for p in sorted(sweep.iterdir()) if (p / "scores.json").is_file()]
    if not runs:
        print(f"no scores.json under {sweep}", file=sys.stderr)
        return 1
    names = [r["encoder"] for r in runs]
    baseline = "dummy" if "dummy" in names and names[0] != "dummy" else None
    print(f"\n{sweep}\n")
    print(compare_table(runs, baseline=baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
