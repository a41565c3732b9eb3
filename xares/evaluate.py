"""``python -m xares.evaluate ckpt_path=<run dir or ckpt> [task=...]``: score without training."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from xares.pipeline import (
    CONFIG_DIR,
    build_datamodule,
    build_module,
    build_trainer,
    evaluate_and_report,
    output_dir,
    prepare_task,
)
from xares.training.checkpoint import load_trainable, read_checkpoint, resolve_ckpt_path
from xares.training.loggers import finish_wandb

log = logging.getLogger(__name__)


def evaluation_config(cfg: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """The saved training config, with this command's task, trainer, logger and overrides."""
    merged = OmegaConf.create(saved)
    with open_dict(merged):
        if cfg.get("task") is not None:
            merged.task = cfg.task
        merged.trainer = cfg.trainer
        # How to run is this command's choice (a checkpoint trained on a GPU can be scored on
        # a CPU); what to compute still comes from the checkpoint.
        if cfg.get("speed") is not None:
            merged.speed = cfg.speed
        merged.logger = cfg.get("logger") or {}
        merged.callbacks = {}
        merged.paths = cfg.paths
        merged.data = OmegaConf.merge(merged.get("data", {}), cfg.get("data") or {})
        merged.generation = OmegaConf.merge(
            merged.get("generation", {}), cfg.get("generation") or {}
        )
        merged.seed = cfg.seed
    return merged


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    out = output_dir(cfg)
    ckpt_path = resolve_ckpt_path(str(cfg.ckpt_path), cfg, here=out)
    checkpoint = read_checkpoint(ckpt_path)
    run_cfg = evaluation_config(cfg, checkpoint["xares_config"])
    pl.seed_everything(int(run_cfg.seed), workers=True)
    try:
        prepare_task(run_cfg)
        datamodule = build_datamodule(run_cfg)
        module = build_module(run_cfg, datamodule)
        load_trainable(module, ckpt_path, checkpoint)
        trainer = build_trainer(run_cfg)
        summary = evaluate_and_report(
            trainer, module, datamodule, out, str(run_cfg.run_name), started
        )
        (out / "checkpoint.txt").write_text(str(Path(ckpt_path).resolve()) + "\n")
        return summary
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get("overall")


if __name__ == "__main__":
    main()
