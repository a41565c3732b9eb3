"""The steps that training and evaluation share: prepare data, build, run the tests, report.

``xares.run.train`` and ``xares.run.evaluate`` are thin entry points over these; neither imports
the other.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import call, instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from xares.encoders.cache import clip_id
from xares.layout import CHECKPOINT_SUFFIX, CHECKPOINTS, RUN_PAGE, SCORES_JSON
from xares.models.build import build_model
from xares.protocol.comparability import verdict
from xares.results import diagnosis, scores
from xares.results.intervals import attach_intervals
from xares.results.run_page import write_run_page
from xares.run import metadata
from xares.run.plan import RunPlan
from xares.training.callbacks import Efficiency
from xares.training.checkpoint import VerifiedCheckpointIO
from xares.training.console import StepProgressBar, quiet_console
from xares.training.datamodule import TaskDataModule
from xares.training.loggers import log_final_scores
from xares.training.module import AudioLLMModule, phase_record
from xares.training.scored_sets import ScoredSets, evaluation_key, weights_digest

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# The frozen encoder is in eval mode by design (see AudioLLM.train).
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


class IncompleteEvaluationError(RuntimeError):
    """Some test set had no scorable sample, and the run did not allow a partial overall."""


class ReportWriteError(OSError):
    """The score files could not be written (the table was printed)."""


def prepare_task(cfg: DictConfig) -> None:
    """Generate a task's data when the task file says how (generated suites)."""
    if cfg.task.get("prepare") is not None:
        call(cfg.task.prepare)


def build_datamodule(plan: RunPlan) -> TaskDataModule:
    return TaskDataModule(
        task=plan.task,
        data=plan.data,
        seed=plan.seed,
        data_dir=plan.data_dir,
        cuda_eval_batch_size=plan.cuda_eval_batch_size,
    )


def build_module(plan: RunPlan, datamodule: TaskDataModule) -> AudioLLMModule:
    model = build_model(plan.model)
    # Token ids (and clip digests for the feature cache) are made in the loader workers.
    datamodule.text = model.text
    if model.feature_cache is not None:
        datamodule.digest = clip_id
    return AudioLLMModule(
        model,
        optimizer=instantiate(dict(plan.optimizer)),
        scheduler=instantiate(dict(plan.scheduler)) if plan.scheduler else None,
        eval_sets=datamodule.eval_specs,
        saved_config=plan.saved_config,
        fused_optimizer=plan.fused_optimizer,
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
    quiet_console()
    bar_wanted = cfg.trainer.get("enable_progress_bar", True)
    if bar_wanted and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgressBar())
    plugins = list(instantiate(cfg.trainer.get("plugins")) or [])
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[*plugins, VerifiedCheckpointIO()],
    )
    refuse_ddp_restart_in_a_sweep(trainer)
    return trainer


def refuse_ddp_restart_in_a_sweep(trainer: pl.Trainer) -> None:
    """Stop a sweep whose DDP ranks Lightning would start by re-running the command line.

    Lightning starts the ranks after the first by running the script again with its command
    line; in a sweep (``-m``, any launcher) that line starts the whole sweep again instead of
    one more rank. Under SLURM, ``srun`` starts every rank, and nothing is re-run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return
    if launcher.cluster_environment.creates_processes_externally or launcher.num_processes < 2:
        return  # SLURM, torchrun: every rank already runs; or no rank to start here
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            f"trainer.strategy={type(trainer.strategy).__name__} on {launcher.num_processes} "
            "devices cannot start its processes inside a sweep (-m): Lightning would re-run "
            "the whole sweep for each extra rank. Submit the sweep with hydra/launcher=slurm "
            "(srun starts one process per GPU: set hydra.launcher.tasks_per_node to the GPUs "
            "per node), or start each multi-device run on its own, without -m."
        )


def publish_scores(loggers: list[Any], summary: dict[str, Any]) -> None:
    """The final table to the experiment tracker; a tracker's failure never fails the run.

    The score files are the run's result. An error here (a W&B service error, a config
    conflict) is logged, so it neither fails a run whose files were written nor hides the
    error of a run whose files could not be.
    """
    try:
        log_final_scores(loggers, summary)
    except Exception as error:
        log.warning(
            "the final scores could not be logged to the experiment tracker (%s: %s); "
            "scores.tsv and scores.json in the run directory hold them",
            type(error).__name__,
            error,
        )


def draw_run_page(out: Path) -> None:
    """``report.html``, a view of the score files just written; drawing it never fails the run.

    A sweep would otherwise stop at a page it could not draw (a plotting or template error)
    after the run's result was safe. The error is logged with the command that draws the page
    again from the files.
    """
    try:
        write_run_page(out)
    except Exception as error:
        log.error(
            "%s could not be written (%s: %s); the scores are in %s. Draw it again with "
            "`python -m xares.report --run-pages %s`",
            RUN_PAGE,
            type(error).__name__,
            error,
            out / SCORES_JSON,
            out,
        )


def model_run_dir(ckpt_path: str | Path | None, out: Path) -> Path:
    """The run directory of the model being scored: the checkpoint's, or this run's."""
    if ckpt_path is None:
        return out
    path = Path(ckpt_path).resolve()
    folder = path.parent if path.is_file() or path.suffix == CHECKPOINT_SUFFIX else path
    return folder.parent if folder.name == CHECKPOINTS else folder


def reuse_scored_sets(
    trainer: pl.Trainer,
    module: AudioLLMModule,
    datamodule: TaskDataModule,
    plan: RunPlan,
    model_dir: Path,
) -> list[str]:
    """Point the module at the finished test sets of this model and settings, and skip the
    ones an interrupted evaluation already scored (unless not ``plan.reuse_scores``); returns those."""
    # How the answers will be computed, in the evaluation record's own terms; the slicing
    # (world size, workers) enters the key on its own.
    numerics = phase_record(trainer, module.model.speed.resolve(trainer.strategy.root_device))
    for slicing in ("world_size", "accumulate_grad_batches"):
        numerics.pop(slicing)
    out = plan.layout.output_dir
    key = evaluation_key(
        plan.saved_config,
        weights_digest(module.state_dict()),
        numerics,
        world_size=trainer.world_size,
        num_workers=datamodule.num_workers,
    )
    # Kept beside the model, so any later evaluation of it finds them; in this run's own
    # folder when the model's is not writable (a shared, read-only model directory).
    home = model_dir if os.access(model_dir, os.W_OK) else out
    module.scored_sets = ScoredSets(
        home,
        key,
        module.eval_sets,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        also_read=tuple({model_dir, out} - {home}),
    )
    module.reused = {}
    if plan.reuse_scores:
        for name in module.eval_sets:
            parts = module.scored_sets.load(name)
            if parts is not None:
                module.reused[name] = parts
    datamodule.skip_eval = set(module.reused)
    reused = [name for name in module.eval_sets if name in module.reused]
    if reused and trainer.is_global_zero:
        print(
            f"reusing the answers of {len(reused)} of {len(module.eval_sets)} test sets, "
            "generated earlier (an interrupted evaluation) with the same weights, settings "
            "and code "
            f"({module.scored_sets.directory}): {', '.join(reused)}. reuse_scores=false "
            "rescores them.",
            flush=True,
        )
    return reused


def evaluate_and_report(
    trainer: pl.Trainer,
    module: AudioLLMModule,
    datamodule,
    plan: RunPlan,
    started: float | None = None,
    run: dict[str, Any] | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Generate and score every test set, print the table, write the score files.

    The table is printed before anything is written, so a result survives an unwritable
    run directory. A test set without a single scorable sample fails the run (after the
    files are written) unless ``allow_partial``, which keeps the overall over the others
    and marks it partial. ``started`` (``time.perf_counter()`` at the run's start) times
    the run's phases for the efficiency block. ``run`` (:func:`xares.run.metadata.describe`)
    is what the run was; it is completed with the end time and written to ``scores.json``.
    ``model_dir`` is the scored model's run directory, where finished test sets are kept so
    a rerun resumes (:func:`reuse_scored_sets`; ``reuse_scores=false`` rescores every set).
    The plan's ``intervals`` say how the bootstrap intervals are drawn.
    """
    out, allow_partial = plan.layout.output_dir, plan.allow_partial
    meter = Efficiency.of(trainer, sample_rate=plan.data.sample_rate)
    reused = reuse_scored_sets(trainer, module, datamodule, plan, model_dir or out)
    trainer.test(module, datamodule=datamodule, verbose=False)
    summary = scores.summarise(module.results, meter.summary(started, trainer))
    summary["reused"] = reused
    # Training steps skipped for a non-finite loss, of the model scored here.
    summary["skipped_steps"] = int((module.training_record or {}).get("skipped_steps") or 0)
    # A debug run that reads only some test batches leaves sets unread on purpose.
    cut_short = bool(trainer.fast_dev_run) or trainer.limit_test_batches not in (1, 1.0)  # type: ignore[attr-defined]
    summary["comparability"] = verdict(
        plan.saved_config,
        training=module.training_record,
        evaluation=module.evaluation_record,
        summary=summary,
        limited_test=cut_short,
    )
    if not trainer.is_global_zero:
        return summary
    if run is not None:
        summary["run"] = metadata.finish(run, module.model.encoder)
    attach_intervals(summary, module.results, plan.intervals)
    diagnosis.attach(summary, module.results, module.eval_sets)
    print("\n" + scores.format_table(summary), flush=True)
    try:
        scores.write_reports(out, module.results, run_name=plan.run_name, summary=summary)
        scores.write_skipped(out, module.results, module.train_skipped.items())
    except OSError as error:
        raise ReportWriteError(
            f"the score files could not be written to {out}: {error}. The table above is this "
            "run's result; make the directory writable to keep the files next time."
        ) from error
    finally:
        # The logger's copy of the table, also when the files could not be written.
        publish_scores(trainer.loggers, summary)
    print(f"\nscores written to {out}/scores.tsv", flush=True)
    draw_run_page(out)
    empty = [t for t in summary["tasks"] if not t["clips"]]
    if empty:
        described = "; ".join(f"{t['task']}: {t['note']}" for t in empty)
        if cut_short:
            log.warning(
                "test batches were limited (fast_dev_run / limit_test_batches): %s", described
            )
        elif not allow_partial:
            raise IncompleteEvaluationError(
                f"{len(empty)} test set(s) had no scorable sample ({described}). The overall "
                "would silently leave them out: fix the test shards (each skipped sample is "
                f"logged with its shard and key), or pass allow_partial=true to accept an "
                f"overall over the other sets, marked partial in {out}/scores.json."
            )
        else:
            log.warning("partial result (allow_partial=true): %s", described)
    return summary
