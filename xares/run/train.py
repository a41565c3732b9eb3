"""``python train.py``: compose → check → build → fit → evaluate → report. Returns the overall score."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from xares.results.scores import overall_score
from xares.run import metadata
from xares.run.directory import claim_run_dir
from xares.run.pipeline import (
    CONFIG_DIR,
    build_datamodule,
    build_module,
    build_trainer,
    evaluate_and_report,
    model_run_dir,
    prepare_task,
)
from xares.run.plan import RunLayout, plan_run
from xares.run.validation import check_data
from xares.training.checkpoint import (
    check_compatible,
    check_writable,
    load_trainable,
    resolve_checkpoint,
)
from xares.training.loggers import finish_wandb
from xares.training.termination import stop_on_sigterm

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one encoder on one task; returns the score summary."""
    started, started_at = time.perf_counter(), metadata.now()
    layout = RunLayout.of(cfg)
    out = layout.output_dir
    with stop_on_sigterm():
        try:
            resolved = resolve_checkpoint(cfg.get("ckpt_path"), layout.runs_dir, here=out)
            # Resuming from a checkpoint inside this very folder finishes that run in place.
            inside = resolved is not None and out.resolve() in Path(resolved[0]).resolve().parents
            claim_run_dir(out, continuing=inside)
            # Everything that can be checked without data or weights, in seconds.
            plan = plan_run(cfg)
            fit, evaluate = plan.train, plan.evaluate
            if resolved is not None:
                check_compatible(*resolved, plan.config, allow=plan.allow_ckpt_mismatch)
            if fit:
                callbacks = (cfg.get("callbacks") or {}).values()
                dirs = {str(c.dirpath) for c in callbacks if c is not None and c.get("dirpath")}
                for directory in sorted({str(layout.checkpoints), *dirs}):
                    check_writable(directory)
            pl.seed_everything(plan.seed, workers=True)
            prepare_task(cfg)
            check_data(plan.task, train=fit, evaluate=evaluate, data_dir=plan.data_dir)

            datamodule = build_datamodule(plan)
            module = build_module(plan, datamodule)
            trainer = build_trainer(cfg)
            unsaved: OSError | None = None
            if fit:
                ckpt_path = resolved[0] if resolved else None
                try:
                    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
                    if not trainer.fast_dev_run:  # type: ignore[attr-defined]
                        # Every rank must call save_checkpoint (it is collective); rank 0 writes.
                        # The full state (optimizer, loops), as Lightning's own default says.
                        trainer.save_checkpoint(layout.last_checkpoint, weights_only=False)
                except OSError as error:
                    # A full disk at the last checkpoint must not cost the evaluation: the
                    # trained model is in memory. Score it, print the table, then fail.
                    if not (evaluate and finished(trainer)):
                        raise
                    unsaved = error
                    log.error(
                        "the final checkpoint could not be written (%s); the trained model is "
                        "evaluated from memory first, then the run fails",
                        error,
                    )
            elif resolved is not None:
                load_trainable(module, *resolved)
            summary: dict[str, Any] = {}
            if evaluate:
                summary = evaluate_and_report(
                    trainer,
                    module,
                    datamodule,
                    plan,
                    started,
                    run=metadata.describe(cfg, started_at),
                    # Trained here: the model is this run's; scored only: the checkpoint's.
                    model_dir=out if fit else model_run_dir(resolved and resolved[0], out),
                )
            if unsaved is not None:
                raise unsaved
            return summary
        finally:
            finish_wandb()


def finished(trainer: pl.Trainer) -> bool:
    """Training reached its last step (what failed came after it)."""
    return trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    overall = overall_score(summary)
    where = HydraConfig.get().runtime.output_dir
    if overall is not None:
        log.info("overall score %.4f (run dir %s)", overall, where)
    elif summary:
        log.warning("no overall score: no test set was scored (run dir %s)", where)
    return overall


if __name__ == "__main__":
    main()
