"""What a run directory holds, by name: the one place each of its file names is written.

<run dir>/
  checkpoints/last.ckpt, checkpoints/*.ckpt   trainable weights (where ckpt_path=last looks)
  scores.tsv, scores.json                     the scores (and intervals, diagnosis, verdict)
  predictions_<test set>.csv                  every answer with its references
  skipped.tsv                                 each clip left out, by key and reason
  report.html                                 the run's own page
  eval_parts/                                 finished test sets, for a resumed evaluation
  checkpoint.txt                              (a re-scoring) the checkpoint it scored
  .hydra/config.yaml, hydra.yaml, overrides.yaml   the composed config, as Hydra writes it
  .xares_run.json                             which run owns the directory
"""

from __future__ import annotations

CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
CHECKPOINT_SUFFIX = ".ckpt"
CHECKPOINT_GLOB = f"*{CHECKPOINT_SUFFIX}"
SCORES_JSON = "scores.json"
SCORES_TSV = "scores.tsv"
PREDICTIONS_GLOB = "predictions_*.csv"
SKIPPED = "skipped.tsv"
RUN_PAGE = "report.html"
EVAL_PARTS = "eval_parts"
CLAIM = ".xares_run.json"
SCORED_CHECKPOINT = "checkpoint.txt"
# In Hydra's `hydra.output_subdir` (`.hydra`): the names Hydra gives them, which xares.api
# writes as the command line would.
HYDRA_CONFIG = "config.yaml"
HYDRA_SETTINGS = "hydra.yaml"
HYDRA_OVERRIDES = "overrides.yaml"

# What makes a directory hold a run's results (a second run must not write into it).
RESULTS = (SCORES_JSON, SCORES_TSV, PREDICTIONS_GLOB, f"{CHECKPOINTS}/{CHECKPOINT_GLOB}")


def predictions_file(task: str) -> str:
    """The name of a test set's predictions file."""
    return PREDICTIONS_GLOB.replace("*", task)
