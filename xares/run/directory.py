"""Run directories: a unique name per run, and a claim that keeps two runs out of one folder.

Hydra names a run's folder from the configured pattern (``conf/hydra/default.yaml``). Time
alone is not unique: two seeds launched in the same second would share a folder, their
score files would overwrite each other and their logs interleave. ``${xares.run_id:}``
adds this process's id, or under SLURM the job id, which stays the same when a pre-empted
job is requeued, so the requeued job finds its own checkpoints again.

``claim_run_dir`` records which run owns a folder and refuses to write into one that holds
another run's results (an explicit ``hydra.run.dir`` reused, or the rare clash across
machines).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from xares.atomic import write_text
from xares.layout import CLAIM, RESULTS

log = logging.getLogger(__name__)

RESULT_PATTERNS = RESULTS


class RunDirError(RuntimeError):
    """The run directory belongs to another run."""


def slurm_job() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def run_id() -> str:
    """``<date>_<time>_<pid>``; under SLURM ``slurm-<job id>`` (stable across a requeue)."""
    job = slurm_job()
    if job:
        return f"slurm-{job}"
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{os.getpid()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("xares.run_id"):
        # Cached: every reference in one config names the same folder.
        OmegaConf.register_new_resolver("xares.run_id", run_id, use_cache=True)


def _identity() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": slurm_job(),
        # SLURM counts the restarts of a requeued job; a second run in the same job has none.
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_run(owner: dict[str, Any], me: dict[str, Any]) -> bool:
    if owner.get("host") == me["host"] and owner.get("pid") == me["pid"]:
        return True
    # A requeued job continuing its own run. Two runs started one after the other inside one
    # job (a loop in a batch script) get the same folder name too, but no restart between them.
    requeued = me["slurm_restarts"] > int(owner.get("slurm_restarts") or 0)
    return bool(owner.get("slurm_job")) and owner.get("slurm_job") == me["slurm_job"] and requeued


def claim_run_dir(path: str | Path, continuing: bool = False) -> None:
    """Make ``path`` this run's, or raise ``RunDirError`` if another run's results are there.

    ``continuing``: this run resumes from a checkpoint inside ``path`` (``ckpt_path`` and
    ``hydra.run.dir`` both the interrupted run's folder), so it finishes that run in place.
    """
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
        return  # DDP ranks > 0 share rank 0's folder
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    claim = path / CLAIM
    me = _identity()
    try:
        with open(claim, "x") as handle:
            json.dump(me, handle)
        return
    except FileExistsError:
        pass
    try:
        owner = json.loads(claim.read_text())
    except (OSError, ValueError):
        owner = {}
    if continuing and not _same_run(owner, me):
        running = owner.get("host") == me["host"] and _alive(int(owner.get("pid") or -1))
        if running:
            raise RunDirError(
                f"run directory {path} belongs to a run that is still running (pid "
                f"{owner.get('pid')}); wait for it to end, or stop it, before continuing it here"
            )
        log.info("continuing the run in %s from its own checkpoint", path)
    elif not _same_run(owner, me):
        results = [str(p.relative_to(path)) for pat in RESULT_PATTERNS for p in path.glob(pat)]
        running = owner.get("host") == me["host"] and _alive(int(owner.get("pid") or -1))
        if results or running:
            state = "is still running" if running else f"left {', '.join(sorted(results)[:4])}"
            same_job = owner.get("slurm_job") and owner.get("slurm_job") == me["slurm_job"]
            hint = (
                " Several runs inside one SLURM job share its id: run them as a sweep "
                "(python train.py -m ...), or give each its own hydra.run.dir."
                if same_job
                else ""
            )
            raise RunDirError(
                f"run directory {path} belongs to another run (host {owner.get('host')}, pid "
                f"{owner.get('pid')}, started {owner.get('started')}), which {state}. Writing "
                "here would overwrite its results: choose another hydra.run.dir, or move that "
                f"directory away first.{hint}"
            )
        log.warning("run directory %s: taking over from a run that left no results", path)
    write_text(claim, json.dumps(me))
