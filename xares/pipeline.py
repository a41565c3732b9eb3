"""The steps that training and evaluation share: prepare data, build, run the tests, report.

``xares.train`` and ``xares.evaluate`` are thin entry points over these; neither imports
the other.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import call, instantiate
from omegaconf import DictConfig, OmegaConf

from xares import report
from xares.encoders.cache import clip_id
from xares.models.build import build_model
from xares.training.callbacks import Efficiency
from xares.training.datamodule import TaskDataModule
from xares.training.module import AudioLLMModule

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds.*")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# The frozen encoder is in eval mode by design (see AudioLLM.train).
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # composed outside a Hydra run (tests): fall back to the log dir
        return Path(cfg.paths.log_dir)


def prepare_task(cfg: DictConfig) -> None:
    """Generate a task's data when the task file says how (generated suites)."""
    os.environ["XARES_DATA_HOME"] = str(cfg.paths.data_dir)
    if cfg.task.get("prepare") is not None:
        call(cfg.task.prepare)


def build_datamodule(cfg: DictConfig) -> TaskDataModule:
    task = OmegaConf.to_container(cfg.task, resolve=True)
    return TaskDataModule(
        task=task,
        seed=int(cfg.seed),
        cuda_eval_batch_size=(cfg.get("speed") or {}).get("eval_batch_size"),
        **OmegaConf.to_container(cfg.data, resolve=True),
    )


def build_module(cfg: DictConfig, datamodule: TaskDataModule) -> AudioLLMModule:
    model = build_model(cfg)
    # Token ids (and clip digests for the feature cache) are made in the loader workers.
    datamodule.text = model.text
    if model.feature_cache is not None:
        datamodule.digest = clip_id
    return AudioLLMModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        eval_sets=datamodule.eval_specs,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if not loggers and spec.get("_target_", "").endswith("LearningRateMonitor"):
            log.info("callback %s skipped: it needs a logger (logger=none)", name)
            continue
        callbacks.append(instantiate(spec))
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)


def evaluate_and_report(
    trainer: pl.Trainer,
    module: AudioLLMModule,
    datamodule,
    out: Path,
    run_name: str | None = None,
    started: float | None = None,
):
    meter = Efficiency.of(trainer)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        summary = report.write_reports(
            out, module.results, run_name=run_name, efficiency=meter.summary(started, trainer)
        )
        print("\n" + report.format_table(summary) + f"\n\nscores written to {out}/scores.tsv")
        return summary
    return report.summarise(module.results)
