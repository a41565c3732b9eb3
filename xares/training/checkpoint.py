"""Checkpoints: find them (``ckpt_path``), read them, check them against the run, load them.

An xares checkpoint holds only the trainable tensors (projector + LoRA) and the resolved
config of the run that wrote it. Those tensors fit only the encoder and decoder they were
trained with, so a run compares its model config with the saved one before loading.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from xares.training.module import AudioLLMModule

log = logging.getLogger(__name__)

# The config sections that decide which tensors a checkpoint holds and what they mean.
MODEL_SECTIONS = ("encoder", "projector", "llm")
# Where weights live, not what they are: compared by file or repository name only, so a
# model moved to a local copy (`encoder.name_or_path=/models/dasheng-base`) still matches.
LOCATION_KEYS = frozenset({"name_or_path", "checkpoint", "path", "filename"})
IGNORED_KEYS = frozenset({"cache_dir"})


_RETRY = (
    "Delete it, or pass another file, or the run directory: a directory (and "
    "ckpt_path=last) gives its newest readable checkpoint."
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, not an xares checkpoint, or for another model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; ``CheckpointError`` naming the file when it is unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): a save was interrupted or the disk was "
            f"full. {_RETRY}"
        )
    try:
        # Our own checkpoints hold a config dict next to the tensors, which needs full unpickling.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is unreadable, probably truncated: "
            f"{type(error).__name__}: {str(error).rstrip('. ')}. {_RETRY}"
        ) from error
    if not isinstance(checkpoint, dict) or "xares_config" not in checkpoint:
        raise CheckpointError(f"{path} is not an xares checkpoint (no saved config)")
    return checkpoint


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    # At equal times last.ckpt wins: ModelCheckpoint writes it next to the step file.
    return sorted(
        set(paths), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True
    )


def _first_readable(candidates: list[Path], what: str) -> tuple[str, dict[str, Any]]:
    errors = []
    for candidate in candidates:
        try:
            checkpoint = read_checkpoint(candidate)
        except CheckpointError as error:
            log.warning("skipping %s", error)
            errors.append(str(error))
            continue
        if errors:
            log.warning("%s: using %s, the newest readable checkpoint", what, candidate)
        return str(candidate), checkpoint
    if not candidates:
        raise FileNotFoundError(f"{what}: no checkpoint found")
    raise CheckpointError(
        f"{what}: none of the {len(candidates)} checkpoint(s) is readable:\n  "
        + "\n  ".join(errors)
    )


def resolve_checkpoint(
    value: str | None, cfg: DictConfig, here: Path | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Find and read the checkpoint ``value`` names: a file, a run directory, or ``last``.

    A run directory gives its newest readable checkpoint (``last.ckpt`` first); ``last``
    the newest readable one of every run of this ``run_name`` other than this run (``here``).
    Returns the path and the checkpoint, or ``None`` when ``value`` is empty.
    """
    if not value:
        return None
    if value == "last":
        runs = Path(cfg.paths.log_dir) / str(cfg.run_name)
        found = [*runs.glob("*/checkpoints/*.ckpt"), *runs.glob("*/*.ckpt")]
        if here is not None:
            found = [p for p in found if Path(here).resolve() not in p.resolve().parents]
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint under {runs}/*/checkpoints/; give a "
                "checkpoint file or run directory instead"
            )
        return _first_readable(_newest_first(found), "ckpt_path=last")
    path = Path(value).expanduser()
    if path.is_dir():
        found = [*path.glob("checkpoints/*.ckpt"), *path.glob("*.ckpt")]
        if not found:
            raise FileNotFoundError(f"no checkpoint (*.ckpt) in run directory {path}")
        return _first_readable(_newest_first(found), f"run directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return str(path), read_checkpoint(path)


def _comparable(node: Any, key: str = "") -> Any:
    if isinstance(node, Mapping):
        return {k: _comparable(v, str(k)) for k, v in sorted(node.items()) if k not in IGNORED_KEYS}
    if isinstance(node, (list, tuple)):
        return [_comparable(v) for v in node]
    if key in LOCATION_KEYS and isinstance(node, str):
        return Path(node.rstrip("/")).name
    return node


def _differences(saved: Any, now: Any, where: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(key), now.get(key), f"{where}.{key}")
        return out
    return [] if saved == now else [f"{where}: checkpoint {saved!r}, this run {now!r}"]


def model_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How the model sections of two resolved configs differ (locations compared by name)."""
    out = []
    for section in MODEL_SECTIONS:
        out += _differences(
            _comparable(saved.get(section) or {}), _comparable(now.get(section) or {}), section
        )
    return out


def check_compatible(
    ckpt_path: str, checkpoint: Mapping[str, Any], cfg: DictConfig | Mapping, allow: bool = False
) -> None:
    """Refuse a checkpoint trained with another encoder, projector or decoder (unless ``allow``)."""
    now = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    saved = checkpoint["xares_config"]
    differences = model_differences(saved, now)
    if not differences:
        return
    listed = "\n  ".join(differences[:12])
    message = (
        f"checkpoint {ckpt_path} (run {saved.get('run_name', '?')}) was trained with another "
        f"model than this run builds:\n  {listed}\n"
        "Its projector and LoRA weights only mean something for the encoder and decoder they "
        "were trained with. Use the checkpoint's own settings (drop the encoder/llm/projector "
        "overrides), or pass allow_ckpt_mismatch=true to load it anyway."
    )
    if allow:
        log.warning("%s\n(loading anyway: allow_ckpt_mismatch=true)", message)
        return
    raise CheckpointError(message)


def load_trainable(module: AudioLLMModule, ckpt_path: str, checkpoint: dict | None = None) -> None:
    """Load projector + LoRA weights; every trainable tensor must be in the checkpoint."""
    checkpoint = checkpoint or read_checkpoint(ckpt_path)
    state = checkpoint["state_dict"]
    own = module.state_dict()  # already only the trainable tensors (see AudioLLMModule)
    expected = set(own)
    saved_encoder = (checkpoint.get("xares_config") or {}).get("encoder", {}).get("_target_")
    now_encoder = type(module.model.encoder).__name__
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(
            f"{ckpt_path} lacks {len(missing)} trainable tensors (e.g. {missing[:3]}): it was "
            f"trained with encoder {saved_encoder} and this run builds {now_encoder}, or with "
            "another projector or LoRA setting"
        )
    wrong = [k for k in sorted(expected) if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        shapes = ", ".join(
            f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
            for k in wrong[:3]
        )
        raise CheckpointError(
            f"{ckpt_path}: tensor shapes do not match ({shapes}); the checkpoint was trained "
            f"with encoder {saved_encoder} and this run builds {now_encoder}"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=False)
    module.load_training_record(checkpoint)
    log.info(
        "loaded %d trainable tensors from %s (step %s)",
        len(expected),
        ckpt_path,
        checkpoint.get("global_step"),
    )


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it and renames it into place, raising
    every error.

    Lightning's default write goes through an fsspec transaction whose ``PermissionError``
    it drops: with an unwritable ``checkpoints/`` a run went on, exited 0, and left an old
    ``last.ckpt`` behind. Here a failed write stops the run and names the file.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: Lightning's own handling
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CheckpointError(
                f"could not write checkpoint {path}: {error}. Make {path.parent} writable (or "
                "free space on its disk); this run's progress past its last saved checkpoint "
                "cannot be kept."
            ) from error


def check_writable(directory: str | Path) -> None:
    """Fail now, not at the first save, when checkpoints cannot be written to ``directory``."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"xares")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(
            f"checkpoints cannot be written to {directory}: {error}. Make it writable, or "
            "point the run elsewhere (hydra.run.dir=... or paths.log_dir=...)."
        ) from error
