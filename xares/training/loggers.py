"""Experiment loggers that never stop a run to ask a question."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_credentials() -> bool:
    """True when W&B can log in without a prompt (API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(
    project: str = "xares",
    name: str | None = None,
    save_dir: str = ".",
    offline: bool | None = None,
    **kwargs: Any,
):
    """A Lightning ``WandbLogger``, offline unless credentials are present (or asked online)."""
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE", "").lower()
    if offline is None:
        offline = mode in ("offline", "dryrun", "disabled") or not wandb_credentials()
    if offline:
        log.info("W&B offline: runs are saved under %s/wandb; upload with `wandb sync`", save_dir)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=project, name=name, save_dir=save_dir, offline=offline, **kwargs)


def finish_wandb() -> None:
    """Close the W&B run if one is open (also after a crash, so the run is not left dangling)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


SCORE_COLUMNS = (
    "task",
    "metric",
    "score",
    "ci_low",
    "ci_high",
    "weight",
    "chance",
    "track",
    "clips",
)


def log_final_scores(loggers: list[Any], summary: Mapping[str, Any]) -> None:
    """The run's score table as a ``wandb.Table``, track means and overall as summary metrics.

    Tagged with the encoder's label (a custom encoder's file, not ``custom``) so a W&B project
    filters and groups runs the way ``leaderboard.html`` does. No-op without a W&B logger.
    """
    from lightning.pytorch.loggers import WandbLogger

    from xares.results.scores import track_means

    run = next((lg.experiment for lg in loggers if isinstance(lg, WandbLogger)), None)
    if run is None:
        return
    import wandb

    def bounds(interval: Any) -> dict[str, float | None]:
        low, high = interval or (None, None)
        return {"ci_low": low, "ci_high": high}

    rows = [
        [{**t, **bounds(t.get("interval"))}.get(c) for c in SCORE_COLUMNS] for t in summary["tasks"]
    ]
    run.log({"scores": wandb.Table(columns=list(SCORE_COLUMNS), data=rows)})
    tracks_interval = summary.get("tracks_interval") or {}
    for track, value in track_means(summary["tasks"]).items():
        run.summary[f"track/{track}"] = value
        for name, bound in bounds(tracks_interval.get(track)).items():
            if bound is not None:
                run.summary[f"track/{track}_{name}"] = bound
    run.summary["overall"] = summary["overall"]
    for name, bound in bounds(summary.get("overall_interval")).items():
        if bound is not None:
            run.summary[f"overall_{name}"] = bound
    run.summary["partial"] = summary["partial"]
    verdict = summary.get("comparability")
    if verdict is not None:
        # Filterable in the W&B project: comparable runs, and why the others are not.
        run.summary["comparable"] = bool(verdict["comparable"])
        run.summary["comparability_reasons"] = [r["code"] for r in verdict["reasons"]]
        run.config.update({"xares_comparability": verdict}, allow_val_change=True)
    info = summary.get("run")
    if info:
        # W&B refuses tags over 64 characters: a custom encoder's path is tagged by its file.
        tag = info["encoder"] if len(info["encoder"]) <= 64 else Path(info["encoder"]).name[-64:]
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), tag]))
        run.config.update({"xares_run": info}, allow_val_change=True)
