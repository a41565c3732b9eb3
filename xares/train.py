"""``python train.py``: compose → build → fit → evaluate → report. Returns the overall score."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import call, instantiate
from omegaconf import DictConfig, OmegaConf

from xares import report
from xares.encoders.cache import clip_id
from xares.models.build import build_model
from xares.training.callbacks import Efficiency
from xares.training.datamodule import TaskDataModule
from xares.training.loggers import finish_wandb
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


def resolve_ckpt_path(value: str | None, cfg: DictConfig) -> str | None:
    """A checkpoint file, a run directory (its last.ckpt), or ``last``: the newest run's."""
    if not value:
        return None
    path = Path(value).expanduser()
    if value == "last":
        runs = sorted(
            Path(cfg.paths.log_dir).glob(f"{cfg.run_name}/*/checkpoints/last.ckpt"),
            key=lambda p: p.stat().st_mtime,
        )
        here = output_dir(cfg) / "checkpoints" / "last.ckpt"
        runs = [r for r in runs if r.resolve() != here.resolve()]
        if not runs:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint under {cfg.paths.log_dir}/{cfg.run_name}/*/checkpoints/"
            )
        return str(runs[-1])
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"no last.ckpt in run directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return str(path)


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
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg)
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if not trainer.fast_dev_run:
                # Every rank must call save_checkpoint (it is collective); rank 0 writes.
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
        elif ckpt_path:
            from xares.evaluate import load_trainable

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
