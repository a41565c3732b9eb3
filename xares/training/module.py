"""The LightningModule: LoRA training on the task mixture, generation + scoring on test sets."""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from xares.data.task_spec import eval_defaults, test_set_id
from xares.metrics import MetricUnavailableError, build_metric
from xares.models.audio_llm import AudioLLM
from xares.protocol.comparability import merge_records
from xares.training.scored_sets import ScoredSets

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 10
UNRECORDED = (
    "the checkpoint predates the record of how it was trained (numerics, processes, batch): "
    "its comparability cannot be checked; train it again to know"
)


def phase_record(trainer: pl.Trainer, speed: Mapping[str, Any]) -> dict[str, Any]:
    """How a phase (training or evaluation) ran, in the terms the comparability verdict reads."""
    return {
        "device": torch.device(speed.get("device") or "cpu").type,
        "decoder_dtype": str(speed.get("decoder_dtype", torch.float32)).removeprefix("torch."),
        "matmul_precision": speed.get("matmul_precision") or torch.get_float32_matmul_precision(),
        "precision": str(trainer.precision),
        "world_size": int(trainer.world_size),
        "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
    }


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], params: list, fused: bool | str = False
) -> torch.optim.Optimizer:
    """The configured optimiser over ``params``; fused (one kernel for the whole update) when
    ``fused`` is true, or ``auto`` with every parameter on a GPU, and the optimiser takes it."""
    target = getattr(factory, "func", factory)
    try:
        accepts = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepts = False
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    wanted = fused is True or (fused == "auto" and on_cuda)
    return factory(params=params, **({"fused": True} if wanted and accepts else {}))


class AudioLLMModule(pl.LightningModule):
    """Trains projector + LoRA; in ``test`` generates answers for each eval set and scores them.

    ``eval_sets`` maps an eval set's name (``eval_esc-50``) to its metric, metric_args, weight
    and optional chance level / track; the order is the order of the test dataloaders.
    """

    def __init__(
        self,
        model: AudioLLM,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        eval_sets: Mapping[str, Mapping[str, Any]] | None = None,
        saved_config: Mapping[str, Any] | None = None,
        fused_optimizer: bool | str = False,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_sets = {k: {**eval_defaults(), **v} for k, v in (eval_sets or {}).items()}
        # Written into every checkpoint (what rebuilds the model later), never read in a run:
        # what the run needs it is given as arguments.
        self.saved_config = dict(saved_config or {})
        self.fused_optimizer = fused_optimizer
        # Checkpoints hold only trainable weights, so loading must not demand the frozen ones.
        self.strict_loading = False
        self._bad_steps = 0
        self.skipped_steps = 0  # non-finite losses whose step was skipped, over the whole fit
        # Training clips skipped (bad audio, missing label...), each once: (set, key, reason).
        self.train_skipped: dict[tuple[str, str, str], dict[str, str]] = {}
        self._stepped = True
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._skipped_clips: dict[str, list[dict[str, str]]] = defaultdict(list)
        self._dropped: dict[str, Counter] = defaultdict(Counter)
        self.results: list[dict[str, Any]] = []
        # How the model was trained (None: not trained) and how its answers were generated,
        # for the comparability verdict; the training record travels with the checkpoints.
        self.training_record: dict[str, Any] | None = None
        self.evaluation_record: dict[str, Any] | None = None
        self._resumed_record: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        # Resuming an interrupted evaluation: where finished sets are kept, and the sets
        # reused from it (their parts, one per process), which the test loader skips.
        self.scored_sets: ScoredSets | None = None
        self.reused: dict[str, list[dict[str, Any]]] = {}
        self._finished: Counter = Counter()
        self._scored: dict[str, dict[str, Any]] = {}
        self._readers = 1

    # ------------------------------------------------------------------ speed
    def setup(self, stage: str) -> None:
        # The device is known here, before the optimiser exists and before weights move: the
        # frozen decoder can change dtype and the step be compiled once for the whole run.
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        if self.model.resolved_speed.get("device") != str(device):
            self.model.configure_speed(device)
        if stage == "fit":
            self._plan_shapes()

    def _plan_shapes(self) -> None:
        """``speed.buckets=auto``: the compiled shapes from the training mixture's lengths."""
        speed = self.model.speed
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if not speed.shaped or speed.shapes is not None or speed.buckets != "auto":
            return
        if datamodule is None or not hasattr(datamodule, "training_lengths"):
            return
        drawn = datamodule.training_lengths(self.model.text, int(speed.shape_batches))
        self.model.plan_shapes(drawn)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int):
        for task, clips in (batch.get("skipped_clips") or {}).items():
            for clip in clips:
                self.train_skipped.setdefault((task, clip["key"], clip["reason"]), clip)
        loss = self.model.batch_loss(batch)
        if not torch.isfinite(loss):
            self._bad_steps += 1
            log.warning(
                "non-finite loss at step %d (tasks %s); step skipped (%d in a row)",
                self.global_step,
                sorted(set(batch["tasks"])),
                self._bad_steps,
            )
            if self._bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(
                    f"{self._bad_steps} consecutive non-finite losses: lower the learning rate, "
                    "use trainer=gpu (bf16) instead of fp16, or check the encoder's features"
                )
            self.skipped_steps += 1
            self._stepped = False
            self._one_more_step()
            return None  # no backward: the optimiser moves no weight for this batch
        self._bad_steps = 0
        self._stepped = True
        size = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state, self._rng_to_restore = self._rng_to_restore, None
        if state:
            torch.set_rng_state(state["torch"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    def _one_more_step(self) -> None:
        """Lightning counts a skipped batch as an optimiser step (global_step); the budget grows
        by one so that ``max_steps`` real updates still happen."""
        if self._trainer is None:
            return
        loop = self.trainer.fit_loop.epoch_loop
        if loop.max_steps is not None and loop.max_steps > 0:
            loop.max_steps += 1

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        # Lightning steps the schedule after every batch; a skipped step moved no weight, so
        # the schedule waits too and max_steps still counts optimiser steps only.
        if self._stepped:
            super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.optimizer_factory, params, self.fused_optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def state_dict(self, *args, **kwargs):
        # Frozen encoder/decoder weights are rebuilt from the config; storing them would make
        # every checkpoint as large as the models.
        full = super().state_dict(*args, **kwargs)
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        return {k: v for k, v in full.items() if k in keep}

    def on_train_start(self) -> None:
        current = phase_record(self.trainer, self.model.resolved_speed)
        previous = self._resumed_record
        self.training_record = merge_records(previous, current)
        if previous is not None and not previous.get("unknown"):
            # Deterministic runs resume exactly (the stream and the random state go on where
            # they stopped); others go on with a fresh stream, which the verdict names.
            # An in-memory feature cache dies with the process: the clips it held are encoded
            # again, in other batches, which can move their features in the last bit.
            cache = self.model.feature_cache
            kept = cache is None or cache.directory is not None
            resume = {
                "step": int(self.global_step),
                "exact": torch.are_deterministic_algorithms_enabled() and kept,
            }
            self.training_record["resumes"] = [*previous.get("resumes", []), resume]
        # A resumed fit: the steps skipped before the checkpoint are owed too.
        for _ in range(self.skipped_steps):
            self._one_more_step()
        if self.model.speed.warm:
            rows = getattr(self.trainer.datamodule, "batch_size", None) or 1  # type: ignore[attr-defined]
            seconds = self.model.warm_up(rows, progress=self.trainer.is_global_zero)
            log.info(
                "compiled the training step for %d shape(s) in %.1f s",
                len(self.model.speed.shapes),
                seconds,
            )

    def on_train_end(self) -> None:
        shapes = self.model.speed.shapes
        if shapes is not None and hasattr(self.model._loss, "seen"):
            log.info(
                "the compiled training step ran on %d shape(s) of the %d planned%s",
                len(self.model._loss.seen),
                len(shapes),
                f"; {len(shapes.outside)} outside the set: {sorted(shapes.outside)}"
                if shapes.outside
                else "",
            )
        if self.training_record is not None:
            self.training_record["steps"] = self.updates
            self.training_record["skipped_steps"] = self.skipped_steps
        if self.skipped_steps:
            log.warning(
                "%d training step(s) skipped for a non-finite loss (not counted in max_steps)",
                self.skipped_steps,
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["xares_config"] = self.saved_config
        # Where the random streams of training (LoRA dropout) stood, for an exact resume.
        checkpoint["xares_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }
        if self.training_record is not None:
            checkpoint["xares_training"] = {
                **self.training_record,
                "steps": self.updates,
                "skipped_steps": self.skipped_steps,
            }

    @property
    def updates(self) -> int:
        """Optimiser steps that moved the weights (Lightning's global_step counts skipped ones)."""
        return int(self.global_step) - self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resumed fit: what the first part ran with is merged into the record at its start.
        self._resumed_record = checkpoint.get("xares_training") or {"unknown": UNRECORDED}
        # Restored at the first batch, not here: starting the loader draws from torch's
        # generator, which the uninterrupted run did once, before its first step.
        self._rng_to_restore = checkpoint.get("xares_rng")
        self.skipped_steps = int(self._resumed_record.get("skipped_steps") or 0)

    def load_training_record(self, checkpoint: Mapping[str, Any]) -> None:
        """The record of a checkpoint whose weights are scored without training here."""
        record = checkpoint.get("xares_training")
        if record is None:
            self.training_record = {"unknown": UNRECORDED}
        else:
            steps = checkpoint.get("global_step")
            skipped = int(record.get("skipped_steps") or 0)
            self.training_record = {**record, "steps": None if steps is None else steps - skipped}

    # ------------------------------------------------------------------ evaluation
    def on_test_start(self) -> None:
        self.evaluation_record = phase_record(self.trainer, self.model.resolved_speed)

    def on_test_epoch_start(self) -> None:
        self._rows = defaultdict(list)
        self._dropped = defaultdict(Counter)
        self._skipped_clips = defaultdict(list)
        self._finished = Counter()
        self._scored = {}
        self.results = []
        loaders = self.trainer.test_dataloaders if self._trainer is not None else None
        loader = loaders[0] if isinstance(loaders, list) and loaders else loaders
        # Each reader (a loader worker, or the main process) marks the end of every set.
        self._readers = max(1, int(getattr(loader, "num_workers", 0) or 0))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        for task, counts in (batch.get("skipped") or {}).items():
            self._dropped[task].update(counts)
        for task, clips in (batch.get("skipped_clips") or {}).items():
            self._skipped_clips[task].extend(clips)
        if batch["keys"]:
            predictions = self.model.batch_answers(batch)
            for key, task, prompt, prediction, refs in zip(
                batch["keys"], batch["tasks"], batch["prompts"], predictions, batch["references"]
            ):
                self._rows[task].append(
                    {"key": key, "prompt": prompt, "prediction": prediction, "references": refs}
                )
        for task in batch.get("finished") or []:
            self._finished[task] += 1
            if self._finished[task] == self._readers:
                self._set_finished(task)

    def _set_finished(self, task: str) -> None:
        """Every reader of this process is past ``task``: keep its answers for a rerun, and in
        one process score it now (the log shows the scores as the evaluation goes)."""
        rows = sorted(self._rows.get(task, []), key=lambda r: r["key"])
        dropped = dict(sorted(self._dropped.get(task, Counter()).items()))
        clips = list(self._skipped_clips.get(task, []))
        payload: dict[str, Any] = {"rows": rows, "dropped": dropped, "skipped_clips": clips}
        alone = self._trainer is None or self.trainer.world_size == 1
        if alone and task in self.eval_sets:
            result = self._score(task, rows, dropped, clips)
            self._scored[task] = result
            payload |= {"score": result["score"], "note": result["note"]}
            done = len(self._scored) + len(self.reused)
            log.info(
                "%s: %s %.4f (%d of %d test sets)",
                task,
                result["metric"],
                result["score"],
                done,
                len(self.eval_sets),
            )
        if self.scored_sets is not None:
            self.scored_sets.save(task, payload)

    def _gathered_rows(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Counter], dict]:
        rows, dropped, clips = dict(self._rows), dict(self._dropped), dict(self._skipped_clips)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (rows, dropped, clips))
            rows, dropped, clips = defaultdict(list), defaultdict(Counter), defaultdict(list)
            for part_rows, part_dropped, part_clips in parts:
                for task, items in part_rows.items():
                    rows[task].extend(items)
                for task, counts in part_dropped.items():
                    dropped[task].update(counts)
                for task, items in part_clips.items():
                    clips[task].extend(items)
        # Deterministic order whatever the number of workers or ranks.
        ordered = {task: sorted(items, key=lambda r: r["key"]) for task, items in rows.items()}
        return ordered, dropped, clips

    def _score(
        self,
        name: str,
        items: list[dict[str, Any]],
        dropped: Mapping[str, int],
        skipped_clips: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """The result of one test set from its answers."""
        spec = self.eval_sets[name]
        metric_name = spec["metric"]
        result = {
            "task": name,
            "metric": metric_name,
            "weight": float(spec["weight"]),
            "chance": spec.get("chance"),
            "track": spec.get("track"),
            "set_id": spec.get("set_id") or test_set_id(spec),
            "metric_args": dict(spec.get("metric_args") or {}),
            "clips": len(items),
            # Test samples left out, by reason (bad audio, corrupt or missing label...).
            "dropped": dict(sorted(dropped.items())),
            # Each of them by key, shard and reason (skipped.tsv).
            "skipped_clips": sorted(skipped_clips or [], key=lambda c: (c["reason"], c["key"])),
            "rows": items,
            "score": float("nan"),
            "note": "",
        }
        # Several references: one scored pair per reference, as the protocol scores them.
        predictions = [r["prediction"] for r in items for _ in r["references"]]
        references = [ref for r in items for ref in r["references"]]
        if result["dropped"]:
            log.warning(
                "%s: %d test sample(s) dropped (%s); scored %d clip(s)",
                name,
                sum(result["dropped"].values()),
                _describe(result["dropped"]),
                len(items),
            )
        if not predictions:
            lost = sum(result["dropped"].values())
            result["note"] = "no scorable samples" + (
                f" ({lost} dropped: {_describe(result['dropped'])})" if lost else ""
            )
            log.error("%s: %s", name, result["note"])
        else:
            try:
                metric = build_metric(metric_name, spec["metric_args"])
                result["score"] = float(metric(predictions, references))
            except MetricUnavailableError as error:
                result["note"] = f"unavailable: {error}"
                log.error("%s: %s", name, error)
        return result

    def on_test_epoch_end(self) -> None:
        rows, dropped, clips = self._gathered_rows()
        results = []
        for name in self.eval_sets:
            if name in self.reused:
                parts = self.reused[name]
                items = sorted((r for p in parts for r in p["rows"]), key=lambda r: r["key"])
                counts: Counter = Counter()
                for part in parts:
                    counts.update(part.get("dropped") or {})
                kept = [c for part in parts for c in part.get("skipped_clips") or []]
                # Scored again from the kept answers: cheap next to generating them.
                result = self._score(name, items, counts, kept)
            elif name in self._scored:
                result = self._scored[name]
            else:
                result = self._score(
                    name, rows.get(name, []), dropped.get(name, Counter()), clips.get(name)
                )
            if not math.isnan(result["score"]):
                self.log(f"test/{name}/{result['metric']}", result["score"], rank_zero_only=True)
            results.append(result)
        self.results = results


def _describe(skipped: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items())
