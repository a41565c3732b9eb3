"""The run plan: the composed config, checked and turned once into typed, frozen values.

The config (Hydra's ``DictConfig``) stops here. Everything below the run package is built from
a plan's fields (the data module from :class:`DataSettings`, the model from a
:class:`ModelSpec`, the checkpoint lookup from a :class:`RunLayout`), so no module reads
settings back out of a config at run time, and each value is written once: in ``conf/``.

The resolved config travels on as :attr:`RunPlan.config` for two readers only: it is saved in
each checkpoint (what rebuilds the model for a later evaluation) and hashed into
``scores.json``; a run never reads a setting out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xares.data.task_spec import TaskSpec
from xares.layout import CHECKPOINTS, LAST_CHECKPOINT, SCORES_JSON, SCORES_TSV
from xares.models.audio_llm import GenerationSettings, LoraSettings
from xares.models.build import FeatureCacheSettings, ModelSpec
from xares.models.speed import Speed
from xares.protocol import is_challenge_task
from xares.results.intervals import IntervalSettings
from xares.run import metadata
from xares.run.validation import ConfigError, check_run, plain
from xares.training.datamodule import DataSettings

# Read by the optimiser, the test loaders and the feature cache, not by the model's Speed.
_SPEED_ELSEWHERE = ("feature_cache", "fused_optimizer", "eval_batch_size")
# A speed section without a feature cache (one written by hand) caches nothing.
_NO_FEATURE_CACHE = {"enabled": False, "memory_gb": 0, "dir": None, "dtype": None}


class NoRunDirectoryError(ValueError):
    """The config names no run directory: it was composed outside a Hydra run."""


@dataclass(frozen=True)
class RunLayout:
    """Where a run writes, and where ``ckpt_path=last`` looks for earlier runs of its name."""

    output_dir: Path
    # <paths.log_dir>/<run_name>: every run of this name has its directory in here.
    runs_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def scores_tsv(self) -> Path:
        return self.output_dir / SCORES_TSV

    @property
    def scores_json(self) -> Path:
        return self.output_dir / SCORES_JSON

    @classmethod
    def of(cls, cfg: DictConfig) -> RunLayout:
        """The run's layout; a config composed by hand must name its directory (nothing is
        guessed, so no run writes into the working directory or a folder called ``None``)."""
        try:
            value = cfg.paths.output_dir
        except Exception as error:  # `${hydra:runtime.output_dir}` without a Hydra run
            value, cause = None, error
        else:
            cause = None
        if value is None or str(value) in ("", "None"):
            raise NoRunDirectoryError(
                "paths.output_dir is not set: this config was composed outside a Hydra run. "
                "From Python call xares.api.train(overrides, run_dir=...) or "
                "xares.api.evaluate(...), which set up the run directory; or set "
                "paths.output_dir yourself."
            ) from cause
        return cls(Path(value), Path(str(cfg.paths.log_dir)) / str(cfg.run_name))


@dataclass(frozen=True)
class RunPlan:
    """One run, as validation found it: what to train and score, with which settings."""

    task: TaskSpec
    train: bool
    evaluate: bool
    seed: int
    run_name: str
    data: DataSettings
    data_dir: str
    model: ModelSpec
    # `_target_` specifications of the optimiser and the schedule (None: constant rate).
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any] | None
    fused_optimizer: bool | str
    # Test batches on a GPU when data.eval_batch_size is null.
    cuda_eval_batch_size: int | None
    intervals: IntervalSettings
    layout: RunLayout
    allow_partial: bool
    reuse_scores: bool
    allow_ckpt_mismatch: bool
    # Saved in checkpoints and hashed into scores.json; never read for a setting.
    config: Mapping[str, Any]
    choices: Mapping[str, str | None]

    @property
    def saved_config(self) -> dict[str, Any]:
        """What each checkpoint keeps: the resolved config and the chosen option names, so a
        re-scored run is still labelled by the encoder it was trained with."""
        return {**self.config, "choices": dict(self.choices)}


def model_spec(cfg: DictConfig) -> ModelSpec:
    """The model a config describes (``encoder``, ``projector``, ``llm``, ``generation``,
    ``model``, ``speed``, ``data.sample_rate``); raises :class:`ConfigError` naming every bad
    setting at once."""
    problems: list[str] = []

    def part(make: Any, *args: Any) -> Any:
        try:
            return make(*args)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
            return None

    speed = dict(plain(cfg.get("speed")) or {})
    task = (cfg.get("task") or {}).get("name")
    lora = plain(cfg.llm.get("lora"))
    settings = dict(
        lora=None if lora is None else part(LoraSettings.of, lora),
        generation=part(GenerationSettings.of, plain(cfg.generation)),
        speed=part(
            Speed.from_config,
            {k: v for k, v in speed.items() if k not in _SPEED_ELSEWHERE},
            is_challenge_task(task),
        ),
        feature_cache=part(
            FeatureCacheSettings.of, speed.get("feature_cache") or _NO_FEATURE_CACHE
        ),
    )
    if problems:
        raise ConfigError(problems)
    return ModelSpec(
        encoder=plain(cfg.encoder),
        projector=plain(cfg.projector),
        decoder=plain(cfg.llm.decoder),
        pack=bool((cfg.get("model") or {}).get("pack")),
        sample_rate=int(cfg.data.sample_rate),
        **settings,
    )


def plan_run(
    cfg: DictConfig, *, train: bool | None = None, evaluate: bool | None = None
) -> RunPlan:
    """Check ``cfg`` (every problem at once, see :func:`check_run`) and plan the run.

    Raises :class:`ConfigError` listing what is wrong; nothing is loaded or built.
    """
    train = bool(cfg.get("train", True)) if train is None else train
    evaluate = bool(cfg.get("evaluate", True)) if evaluate is None else evaluate
    problems: list[str] = []

    def settings(make: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return make(*args, **kwargs)
        except ConfigError as error:
            problems.extend(error.problems)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
        return None

    # Every problem at once: the task and numbers checked, then each typed section built.
    task = settings(check_run, cfg, train=train, evaluate=evaluate)

    model = settings(model_spec, cfg)
    # The checks above already read `data` and `intervals` whole: built again after a failed
    # check, they would only repeat its problems.
    checked = not problems
    data = settings(DataSettings.of, plain(cfg.data)) if checked else None
    intervals = settings(IntervalSettings.of, plain(cfg.get("intervals"))) if checked else None
    speed = plain(cfg.get("speed")) or {}
    if problems:
        raise ConfigError(problems)
    scheduler = cfg.get("scheduler")
    return RunPlan(
        task=task,
        train=train,
        evaluate=evaluate,
        seed=int(cfg.seed),
        run_name=str(cfg.run_name),
        data=data,
        data_dir=str(cfg.paths.data_dir),
        model=model,
        optimizer=plain(cfg.optimizer),
        scheduler=plain(scheduler) if scheduler else None,
        fused_optimizer=speed.get("fused_optimizer") or False,
        cuda_eval_batch_size=speed.get("eval_batch_size"),
        intervals=intervals,
        layout=RunLayout.of(cfg),
        allow_partial=bool(cfg.get("allow_partial")),
        reuse_scores=bool(cfg.get("reuse_scores", True)),
        allow_ckpt_mismatch=bool(cfg.get("allow_ckpt_mismatch")),
        config=plain(cfg),
        choices=metadata.choices(cfg),
    )
