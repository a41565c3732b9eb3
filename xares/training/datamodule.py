"""LightningDataModule over a task file: the weighted training mixture and the ordered test sets."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from xares.data.lengths import training_lengths
from xares.data.mixing import DatasetSource, EvalSet, EvalSuite, TrainMixture
from xares.data.shards import resolve_shards
from xares.data.task_spec import EvalSpec, TaskSpec, TrainSpec, test_set_id
from xares.settings import from_section
from xares.training.termination import leave_sigterm_to_the_main_process

log = logging.getLogger(__name__)


def _cpu_count() -> int:
    """Cores this process may run on: its affinity, which a batch scheduler narrows."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def _sources(
    datasets: Mapping[str, TrainSpec | EvalSpec | Mapping[str, Any] | None],
    root: str | None,
    task: str,
    download: bool,
    data_dir: str | None = None,
) -> list[DatasetSource]:
    sources = []
    for name, spec in datasets.items():
        if spec is None:  # a mixture may switch a dataset off with `name: null`
            continue
        if isinstance(spec, Mapping):
            spec = TaskSpec.parse({"name": task, "train": {name: spec}}).train[name]
        shards = resolve_shards(
            spec.shards,
            spec.repo_id,
            root=root,
            download=download,
            task=task,
            cache_dir=data_dir,
        )
        sources.append(
            DatasetSource(
                name=name,
                shards=shards,
                label_key=spec.label_key,
                prompt=spec.prompt,
                prob=getattr(spec, "prob", None),
                label_join=spec.label_join,
            )
        )
    # `prob: null` means the dataset's share of all shards in the mixture.
    total_shards = sum(len(s.shards) for s in sources)
    for source in sources:
        if source.prob is None:
            source.prob = len(source.shards) / total_shards
        source.prob = float(source.prob)
    return sources


@dataclass(frozen=True)
class DataSettings:
    """How clips are read, cropped and batched: the ``data`` config group, typed.

    Every value comes from the config (``conf/train.yaml``); none is assumed here, so a
    setting is written in one place. ``xares.run.validation`` checks the values and names a bad
    one before this is built.
    """

    batch_size: int
    num_workers: int
    sample_rate: int
    crop_seconds: float
    eval_max_seconds: float | None
    shuffle_buffer: int
    sort_buffer: int
    eval_sort_buffer: int
    eval_batch_size: int | None
    eval_limit: int | None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> DataSettings:
        return from_section(cls, "data", values)


class TaskDataModule(pl.LightningDataModule):
    def __init__(
        self,
        task: Mapping[str, Any] | TaskSpec,
        data: DataSettings,
        *,
        seed: int,
        root: str | None = None,
        download: bool = True,
        cuda_eval_batch_size: int | None = None,
        data_dir: str | None = None,
    ):
        super().__init__()
        self.task = TaskSpec.parse(task)
        self.name = self.task.name
        self.data = data
        self.batch_size = data.batch_size
        self.num_workers = data.num_workers
        self.sample_rate = data.sample_rate
        self.crop_seconds = data.crop_seconds
        self.eval_max_seconds = data.eval_max_seconds
        self.shuffle_buffer = data.shuffle_buffer
        self.sort_buffer = data.sort_buffer
        self.eval_sort_buffer = data.eval_sort_buffer
        self.eval_batch_size = data.eval_batch_size
        # On a GPU a test batch costs about as much as one row, so one size serves every set.
        self.cuda_eval_batch_size = cuda_eval_batch_size
        # Set once the model exists (see xares.run.train.build_module): the model's tokeniser and
        # the feature cache's clip digest run in the loader workers, inside the collate.
        self.text: Callable[..., dict[str, Any]] | None = None
        self.digest: Callable[[torch.Tensor], str] | None = None
        self.eval_limit = data.eval_limit
        self.seed = seed
        self.root = root
        self.download = download
        self.data_dir = data_dir
        self.train_sources: list[DatasetSource] | None = None
        self.eval_sources: list[DatasetSource] | None = None
        self.skip_eval: set[str] = set()
        self._capped: set[int] = set()  # worker counts already warned about

    @property
    def eval_specs(self) -> dict[str, dict[str, Any]]:
        """Each test set as a plain dict, with its identity named from the data cache."""
        return {
            name: {**spec, "set_id": test_set_id(spec, self.data_dir)}
            for name, spec in self.task.eval_dicts().items()
        }

    def prepare_data(self) -> None:
        # Rank 0 fetches what this run needs once; setup() on every rank then reads the cache.
        stage = None
        if self.trainer is not None:
            stage = "fit" if self.trainer.state.fn == "fit" else "test"
        self._resolve(stage=stage, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        self._resolve(stage, download=self.download)

    def _resolve(self, stage: str | None, download: bool) -> None:
        if stage in (None, "fit") and self.train_sources is None:
            if not self.task.train:
                raise ValueError(f"task {self.name} has no `train` datasets")
            self.train_sources = _sources(
                self.task.train, self.root, self.name, download, self.data_dir
            )
            log.info(
                "training mixture: %s",
                ", ".join(
                    f"{s.name} p={s.prob:.3f} ({len(s.shards)} shards)" for s in self.train_sources
                ),
            )
        if stage in (None, "test", "predict") and self.eval_sources is None:
            if not self.task.eval:
                raise ValueError(f"task {self.name} has no `eval` datasets")
            self.eval_sources = _sources(
                self.task.eval, self.root, self.name, download, self.data_dir
            )

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _ranks(self) -> tuple[int, int] | None:
        """(rank, world size) read here, in the main process, for the loader workers."""
        trainer = self.trainer
        return None if trainer is None else (trainer.global_rank, trainer.world_size)

    def _workers(self, training: list[DatasetSource] | None = None) -> int:
        """``num_workers`` for one loader, capped where more workers cannot help.

        A worker beyond the cores only competes for them. In training every reader (a worker
        of a rank) is dealt whole shards of each set (``xares.data.mixing.own_slice``) while
        there are no more readers than the set has shards; past that the leftover shards are
        split clip by clip, and a reader whose share of a small set comes up empty reads the
        whole set instead, training on clips the others also train on. So a training loader
        has at most as many readers as its smallest set has shards. Test sets are split clip
        by clip whatever the shards, so only the cores cap them.
        """
        requested = self.num_workers
        if requested <= 1:  # one worker reads what the main process would: nothing to cap
            return requested
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        per_node = max(1, world // max(1, trainer.num_nodes)) if trainer is not None else 1
        cores = _cpu_count()
        limits = [
            (
                max(1, cores // per_node),
                f"this process has {cores} CPU core(s)"
                + (f" shared by {per_node} ranks" if per_node > 1 else ""),
            )
        ]
        if training:
            smallest = min(training, key=lambda source: len(source.shards))
            ranks = f" across {world} ranks" if world > 1 else ""
            limits.append(
                (
                    max(1, len(smallest.shards) // world),
                    f"the training set {smallest.name} has {len(smallest.shards)} shard(s) to "
                    f"deal out{ranks}, and a worker past that would get no whole shard of it",
                )
            )
        workers = min(limit for limit, _ in limits)
        if workers >= requested:
            return requested
        if workers not in self._capped:
            self._capped.add(workers)
            why = "; ".join(reason for limit, reason in limits if limit == workers)
            log.warning(
                "data.num_workers=%d: the %s loader starts %d worker(s) instead: %s. "
                "data.num_workers=%d or fewer asks for no more than it can use.",
                requested,
                "training" if training else "test",
                workers,
                why,
                workers,
            )
        return workers

    def _loader(self, dataset, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            # Page-locked batches let the copy to the GPU overlap the previous step.
            pin_memory=self._on_cuda(),
            worker_init_fn=leave_sigterm_to_the_main_process,
        )

    def _batching(self) -> dict[str, Any]:
        """How the training mixture draws, crops and batches its clips."""
        return {
            "batch_size": self.batch_size,
            "sample_rate": self.sample_rate,
            "crop_seconds": self.crop_seconds,
            "shuffle_buffer": self.shuffle_buffer,
            "sort_buffer": self.sort_buffer,
            "seed": self.seed,
        }

    def train_dataloader(self) -> DataLoader:
        self._resolve("fit", self.download)
        mixture = TrainMixture(
            self.train_sources, text=self.text, digest=self.digest, **self._batching()
        )
        if self.trainer is not None:
            # Batches trained on before a resume (Lightning's global_step counts skipped ones).
            mixture.offset = self.trainer.global_step * self.trainer.accumulate_grad_batches
            mixture.exact = torch.are_deterministic_algorithms_enabled()
        mixture.ranks = self._ranks()
        return self._loader(mixture, self._workers(self.train_sources))

    def training_lengths(self, text: Callable[..., dict[str, Any]], batches: int) -> list[dict]:
        """The lengths of the training mixture's first ``batches`` batches (cached on disk).

        Drawn with this run's batching and seed, tokenised by ``text``; see
        :mod:`xares.data.lengths`. Kept under ``<data_dir>/batch_lengths`` when there is one.
        """
        self._resolve("fit", self.download)
        return training_lengths(
            self.train_sources,
            text,
            batches,
            cache_dir=os.path.join(self.data_dir, "batch_lengths") if self.data_dir else None,
            **self._batching(),
        )

    def test_dataloader(self) -> DataLoader:
        """One loader over every test set in order (see :class:`EvalSuite`)."""
        self._resolve("test", self.download)
        sets = []
        for source in self.eval_sources:
            if source.name in self.skip_eval:
                continue  # scored by an interrupted evaluation of the same model and settings
            batch_size = self.eval_batch_size
            if batch_size is None and self._on_cuda():
                batch_size = self.cuda_eval_batch_size
            batch_size = batch_size or self.task.eval[source.name].batch_size
            sets.append(
                EvalSet(
                    source,
                    batch_size=batch_size,
                    sample_rate=self.sample_rate,
                    max_seconds=self.eval_max_seconds,
                    sort_buffer=self.eval_sort_buffer,
                    limit=self.eval_limit,
                    text=self.text,
                    digest=self.digest,
                )
            )
        ranks = self._ranks()
        for eval_set in sets:
            eval_set.ranks = ranks
        return self._loader(EvalSuite(sets), self._workers())
