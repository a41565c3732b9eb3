"""``python -m xares.evaluate ckpt_path=<run dir or ckpt> [task=...]``: score without training."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from xares.atomic import write_text
from xares.layout import SCORED_CHECKPOINT
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
    MODEL_SECTIONS,
    check_compatible,
    load_trainable,
    resolve_checkpoint,
)
from xares.training.loggers import finish_wandb
from xares.training.termination import stop_on_sigterm

log = logging.getLogger(__name__)


def _command_line_keys() -> set[str]:
    """The config keys this command's overrides name (``encoder=mel`` → ``encoder``, ...)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # no Hydra run
        return set()
    return {o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] for o in overrides}


def evaluation_config(cfg: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """The saved training config, with this command's task, trainer, logger and overrides.

    The model comes from the checkpoint. An option chosen on the command line
    (``encoder=mel``) replaces the saved section; a setting (``+encoder.name_or_path=...``)
    edits it. A decoder that a task file brings along is not the user's choice and is ignored.
    """
    merged = OmegaConf.create(saved)
    given = _command_line_keys()
    with open_dict(merged):
        for section in MODEL_SECTIONS:
            if cfg.get(section) is None:
                continue
            chosen = OmegaConf.to_container(cfg[section], resolve=False)
            if section in given:
                merged[section] = chosen
            elif any(k.startswith(f"{section}.") for k in given):
                merged[section] = OmegaConf.merge(merged.get(section) or {}, chosen)
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
        chosen = {k: v for k, v in (cfg.get("generation") or {}).items() if v is not None}
        merged.generation = OmegaConf.merge(merged.get("generation", {}), chosen)
        merged.seed = cfg.seed
        # How this command treats the scores is its own choice, not the training run's.
        for key in ("allow_partial", "reuse_scores", "allow_ckpt_mismatch", "intervals"):
            if key in cfg:
                merged[key] = cfg[key]
    return merged


def scored_identity(saved: dict[str, Any], run_cfg: DictConfig) -> DictConfig:
    """What a re-scoring computed, for the run block's hashes: the checkpoint's training config
    (its trainer and speed included: they made the model) with the test sets, data and
    generation settings it was scored with. This command's trainer and speed are how it ran,
    not what it computed, so a re-scoring with the training run's settings hashes as that run,
    and the leaderboard keeps one result for that model and seed.
    """
    identity = OmegaConf.create(saved)
    with open_dict(identity):
        for key in ("task", "data", "generation"):
            if run_cfg.get(key) is not None:
                identity[key] = run_cfg[key]
    return identity


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    started, started_at = time.perf_counter(), metadata.now()
    layout = RunLayout.of(cfg)
    out = layout.output_dir
    with stop_on_sigterm():
        try:
            claim_run_dir(out)
            ckpt_path, checkpoint = resolve_checkpoint(
                str(cfg.ckpt_path), layout.runs_dir, here=out
            )
            # The checkpoint's config is read here, at the boundary, to plan the re-scoring.
            saved = checkpoint["xares_config"]
            run_cfg = evaluation_config(cfg, saved)
            plan = plan_run(run_cfg, train=False, evaluate=True)
            check_compatible(ckpt_path, checkpoint, plan.config, allow=plan.allow_ckpt_mismatch)
            pl.seed_everything(plan.seed, workers=True)
            prepare_task(run_cfg)
            check_data(plan.task, train=False, evaluate=True, data_dir=plan.data_dir)

            datamodule = build_datamodule(plan)
            module = build_module(plan, datamodule)
            load_trainable(module, ckpt_path, checkpoint)
            trainer = build_trainer(run_cfg)
            scored = str(Path(ckpt_path).resolve())
            write_text(out / SCORED_CHECKPOINT, scored + "\n")
            return evaluate_and_report(
                trainer,
                module,
                datamodule,
                plan,
                started,
                run=metadata.describe(
                    run_cfg,
                    started_at,
                    kind="evaluate",
                    checkpoint=scored,
                    trained_seed=saved.get("seed"),
                    identity=scored_identity(saved, run_cfg),
                ),
                model_dir=model_run_dir(ckpt_path, out),
            )
        finally:
            finish_wandb()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return overall_score(evaluate(cfg))


if __name__ == "__main__":
    main()
