"""Checkpoints: resolve ``ckpt_path`` values, read xares checkpoints and load trainable weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from xares.training.module import AudioLLMModule

log = logging.getLogger(__name__)


def resolve_ckpt_path(value: str | None, cfg: DictConfig, here: Path | None = None) -> str | None:
    """A checkpoint file, a run directory (its last.ckpt), or ``last``: the newest run's."""
    if not value:
        return None
    path = Path(value).expanduser()
    if value == "last":
        runs = sorted(
            Path(cfg.paths.log_dir).glob(f"{cfg.run_name}/*/checkpoints/last.ckpt"),
            key=lambda p: p.stat().st_mtime,
        )
        if here is not None:
            own = (here / "checkpoints" / "last.ckpt").resolve()
            runs = [r for r in runs if r.resolve() != own]
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
