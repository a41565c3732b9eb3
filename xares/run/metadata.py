"""What a run was: the ``run`` block of ``scores.json``, read by the leaderboard.

The leaderboard groups and labels runs from this block alone, never from folder names, so
two custom encoders are two rows, and seeds of one configuration are one row.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from xares.fingerprint import fingerprint

log = logging.getLogger(__name__)

GROUPS = ("encoder", "projector", "llm", "task")
# Top-level keys left out of the config hash. `paths`: where this machine keeps data and
# outputs, not what was computed. `seed`: the repetition axis, so seeds of one configuration
# share a hash and the leaderboard shows them as mean ± spread. `run_name`: a label made from
# the choices, whose content is hashed anyway. `logger`, `callbacks`: where metrics go and
# when checkpoints are written, not what is trained. `ckpt_path`: where a resumed run picked
# up, which ends at the same step. `choices`: the names of the chosen options (labels).
UNHASHED = ("paths", "seed", "run_name", "logger", "callbacks", "ckpt_path", "choices", "hydra")
# Display switches of the trainer: they change what is printed, not what is computed.
UNHASHED_TRAINER = ("enable_progress_bar", "enable_model_summary")
CUSTOM_LOADER = "xares.encoders.loading.load_encoder"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def choices(cfg: DictConfig) -> dict[str, str | None]:
    """The option chosen in each config group (``encoder: mel``), saved with the checkpoint.

    ``python -m xares.evaluate`` composes no model groups of its own (they come from the
    checkpoint), so there the training run's choices, kept under ``choices``, fill the gaps.
    """
    from hydra.core.hydra_config import HydraConfig

    saved = dict(cfg.get("choices") or {})
    try:
        chosen = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed outside a Hydra run
        chosen = {}
    return {group: chosen.get(group) or saved.get(group) for group in GROUPS}


def encoder_label(cfg: Mapping[str, Any], choice: str | None) -> str:
    """The config option's name, or for a custom encoder the file or class it loads."""
    encoder = cfg.get("encoder") or {}
    if encoder.get("_target_") == CUSTOM_LOADER and encoder.get("path"):
        return str(encoder["path"])
    return choice or str(encoder.get("_target_", "unknown")).rsplit(".", 1)[-1]


def _relative_paths(value: Any, paths: list[tuple[str, str]]) -> Any:
    """Strings under a configured path written as ``<paths.key>/rest``: stable across machines."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, paths) for v in value]
    if isinstance(value, str):
        for key, prefix in paths:
            if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                return f"<paths.{key}>" + value[len(prefix.rstrip("/")) :]
    return value


def _resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return cast(
            dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        )
    return dict(cfg)


def config_hash(cfg: DictConfig | Mapping[str, Any], sections: tuple[str, ...] = ()) -> str:
    """12 hex digits of SHA-256 over the resolved config, without the keys in ``UNHASHED``.

    ``sections`` limits the hash to those top-level keys (the model's identity). Locations
    under ``paths`` are written relative to it, so the same run on another machine, or in
    another run directory, has the same hash.
    """
    resolved = _resolved(cfg)
    paths = resolved.get("paths") or {}
    prefixes = sorted(
        ((k, str(v)) for k, v in paths.items() if isinstance(v, str) and v),
        key=lambda kv: -len(kv[1]),
    )
    kept = {k: v for k, v in resolved.items() if k not in UNHASHED}
    if sections:
        kept = {k: v for k, v in kept.items() if k in sections}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k not in UNHASHED_TRAINER}
    return fingerprint(_relative_paths(kept, prefixes), 12)


def git_state(where: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirty flag of the xares checkout; ``None`` when it is not a git checkout.

    Dirty means tracked files differ from the commit; untracked files (outputs, data) do not
    count.
    """
    where = where or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def version() -> str | None:
    try:
        return metadata.version("xares")
    except metadata.PackageNotFoundError:
        return None


def describe(
    cfg: DictConfig,
    started: str,
    kind: str = "train",
    checkpoint: str | None = None,
    trained_seed: int | None = None,
    identity: DictConfig | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``run`` block, less what only the end of the run knows (``ended``, the encoder class).

    An ``evaluate`` run re-scores the model of a ``checkpoint``: its ``seed`` is the one that
    model was trained with (``trained_seed``), not the seed of its own generation, so the
    leaderboard sees the re-scored run as its training run again, not as another seed.
    ``identity`` is the config the hashes are taken over, when it is not ``cfg`` itself
    (:func:`xares.run.evaluate.scored_identity`).
    """
    chosen = choices(cfg)
    resolved = _resolved(cfg)
    hashed = resolved if identity is None else _resolved(identity)
    return {
        "kind": kind,
        "checkpoint": checkpoint,
        "encoder": encoder_label(resolved, chosen["encoder"]),
        "encoder_config": chosen["encoder"],
        "task": chosen["task"] or (resolved.get("task") or {}).get("name"),
        "llm": chosen["llm"],
        "projector": chosen["projector"],
        "seed": resolved.get("seed") if trained_seed is None else trained_seed,
        "config_hash": config_hash(hashed),
        "model_hash": config_hash(hashed, sections=("encoder", "projector", "llm")),
        "git": git_state(),
        "started": started,
        "hostname": socket.gethostname(),
        "xares_version": version(),
    }


def finish(info: Mapping[str, Any], encoder: Any = None) -> dict[str, Any]:
    """The block at the end of the run: end time and the class the encoder really is."""
    done = {**info, "ended": now()}
    if encoder is not None:
        cls = type(encoder)
        done["encoder_class"] = f"{cls.__module__}.{cls.__qualname__}"
    return done
