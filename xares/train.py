"""``python train.py``: compose → build → fit → evaluate → report. Returns the overall score."""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from xares.pipeline import (
    CONFIG_DIR,
    build_datamodule,
    build_module,
    build_trainer,
    evaluate_and_report,
    output_dir,
    prepare_task,
)
from xares.training.checkpoint import load_trainable, resolve_ckpt_path
from xares.training.loggers import finish_wandb

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one encoder on one task; returns the score summary."""
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True)
    out = output_dir(cfg)
    try:
        prepare_task(cfg)
        datamodule = build_datamodule(cfg)
        module = build_module(cfg, datamodule)
        trainer = build_trainer(cfg)
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg, here=out)
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if not trainer.fast_dev_run:
                # Every rank must call save_checkpoint (it is collective); rank 0 writes.
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
        elif ckpt_path:
            load_trainable(module, ckpt_path)
        summary: dict[str, Any] = {}
        if cfg.get("evaluate", True):
            summary = evaluate_and_report(
                trainer, module, datamodule, out, str(cfg.run_name), started
            )
        return summary
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    overall = summary.get("overall") if summary else None
    if overall is not None:
        log.info("overall score %.4f (run dir %s)", overall, HydraConfig.get().runtime.output_dir)
    return overall


if __name__ == "__main__":
    main()
