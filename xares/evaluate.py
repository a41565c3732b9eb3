"""``python -m xares.evaluate ckpt_path=<run dir or ckpt> [task=...]``: score without training."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from xares.train import (
    CONFIG_DIR,
    build_datamodule,
    build_module,
    build_trainer,
    evaluate_and_report,
    output_dir,
    prepare_task,
    resolve_ckpt_path,
)
from xares.training.loggers import finish_wandb
from xares.training.module import AudioLLMModule

log = logging.getLogger(__name__)


def read_checkpoint(path: str) -> dict[str, Any]:
    # Our own checkpoints hold a config dict next to the tensors, which needs full unpickling.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "xares_config" not in checkpoint:
        raise ValueError(f"{path} is not an xares checkpoint (no saved config)")
    return checkpoint


def load_trainable(module: AudioLLMModule, ckpt_path: str, checkpoint: dict | None = None) -> None:
    """Load projector + LoRA weights; every trainable tensor must be in the checkpoint."""
    checkpoint = checkpoint or read_checkpoint(ckpt_path)
    state = checkpoint["state_dict"]
    own = module.state_dict()  # already only the trainable tensors (see AudioLLMModule)
    expected = set(own)
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(
            f"{ckpt_path} lacks {len(missing)} trainable tensors (e.g. {missing[:3]}); was it "
            "trained with a different encoder, projector or LoRA setting?"
        )
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{ckpt_path}: shape mismatch for {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in expected}, strict=False)
    log.info(
        "loaded %d trainable tensors from %s (step %s)",
        len(expected),
        ckpt_path,
        checkpoint.get("global_step"),
    )


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
    ckpt_path = resolve_ckpt_path(str(cfg.ckpt_path), cfg)
    checkpoint = read_checkpoint(ckpt_path)
    run_cfg = evaluation_config(cfg, checkpoint["xares_config"])
    pl.seed_everything(int(run_cfg.seed), workers=True)
    try:
        prepare_task(run_cfg)
        datamodule = build_datamodule(run_cfg)
        module = build_module(run_cfg, datamodule)
        load_trainable(module, ckpt_path, checkpoint)
        trainer = build_trainer(run_cfg)
        out = output_dir(cfg)
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
