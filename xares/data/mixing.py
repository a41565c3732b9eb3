"""Streams over shards: the training mixture (infinite, weighted) and ordered eval sets."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from xares.data.collate import collate, length_buckets
from xares.data.samples import Example, SkipCounter, read_tar_samples, to_example

log = logging.getLogger(__name__)


@dataclass
class DatasetSource:
    """One dataset of a task, shards already resolved to local files."""

    name: str
    shards: list[str]
    label_key: str
    prompt: str
    prob: float = 1.0
    label_join: str | None = None
    skips: SkipCounter = field(init=False)

    def __post_init__(self):
        if not self.shards:
            raise ValueError(f"dataset {self.name} has no shards")
        self.skips = SkipCounter(self.name)


def _process_slot(ranks: tuple[int, int] | None = None) -> tuple[int, int]:
    """(index, count) of this data-reading process across DDP ranks and loader workers.

    ``ranks`` is (rank, world size) as the main process saw them. A loader worker started
    by spawn or forkserver (the default start method from Python 3.14) has no process
    group of its own, so asking ``torch.distributed`` there would put every rank on the
    same part of the data.
    """
    rank, world = ranks or (0, 1)
    if ranks is None and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def own_slice(
    shards: Sequence[str], slot: int, slots: int
) -> tuple[list[str], Callable[[Iterator[dict]], Iterator[dict]]]:
    """This reader's part of a training set: the shards it walks, and a filter over their samples.

    Readers draw from their parts at the same rate, so a sample's rate is the inverse of the
    size of the part that holds it: the parts must be equal for no clip to be over-sampled.
    With ``n`` shards and ``slots`` readers, the first ``n - n % slots`` shards are dealt out
    whole (every ``slots``-th to each reader); the ``n % slots`` left over are walked by every
    reader, each keeping every ``slots``-th sample of such a shard, counted within the shard
    so that the split stays disjoint whatever order the shards are walked in. With
    equal-sized shards every reader then holds the same number of samples (within one per
    leftover shard), and every sample is in exactly one part.
    """
    if slots <= 1:
        return list(shards), lambda samples: samples
    dealt = len(shards) - len(shards) % slots
    owned = list(shards[slot:dealt:slots])
    shared = list(shards[dealt:])
    if not shared:
        return owned, lambda samples: samples
    # read_tar_samples tags each sample with the path it was given as `__url__`.
    split = set(shared)

    def share(samples: Iterator[dict]) -> Iterator[dict]:
        position: Counter = Counter()
        for sample in samples:
            shard = sample.get("__url__")
            if shard not in split:
                yield sample
                continue
            position[shard] += 1
            if (position[shard] - 1) % slots == slot:
                yield sample

    return owned + shared, share


def crop(audio: torch.Tensor, max_samples: int, rng: random.Random | None) -> torch.Tensor:
    """Random crop in training (``rng`` given), the clip's start in evaluation."""
    if max_samples <= 0 or audio.shape[0] <= max_samples:
        return audio
    start = rng.randrange(audio.shape[0] - max_samples + 1) if rng is not None else 0
    return audio[start : start + max_samples]


class TrainMixture(IterableDataset):
    """An endless stream of length-bucketed batches drawn from several datasets by probability.

    Each dataset cycles over its shards in a fresh random order per pass, through a shuffle
    buffer; each draw picks a dataset with the task's (normalised) probabilities.
    """

    def __init__(
        self,
        sources: Sequence[DatasetSource],
        *,
        batch_size: int,
        sample_rate: int,
        crop_seconds: float,
        shuffle_buffer: int,
        sort_buffer: int,
        seed: int,
        text: Callable[..., dict[str, Any]] | None = None,
        digest: Callable[[torch.Tensor], str] | None = None,
    ):
        super().__init__()
        self.sources = list(sources)
        self.text = text
        self.digest = digest
        total = sum(s.prob for s in self.sources)
        if total <= 0:
            raise ValueError("the training mixture's probabilities sum to zero")
        self.weights = [s.prob / total for s in self.sources]
        self.batch_size = batch_size
        self.sample_rate = sample_rate
        self.max_samples = int(crop_seconds * sample_rate)
        self.shuffle_buffer = shuffle_buffer
        self.sort_buffer = max(sort_buffer, batch_size)
        self.seed = seed
        # Batches already trained on, set on resume. `exact`: the stream goes on where it
        # stopped (replayed up to there: the batches are drawn again, not trained on);
        # otherwise it starts afresh from a seed of its own, at no cost.
        self.offset = 0
        self.exact = False
        self.ranks: tuple[int, int] | None = None  # (rank, world size), set by the datamodule

    def _examples(
        self, source: DatasetSource, rng: random.Random, slot: int = 0, slots: int = 1
    ) -> Iterator[Example]:
        own, share = own_slice(source.shards, slot, slots)
        # A reader's part is a strict subset of the set when there are several readers.
        whole = slots <= 1
        buffer: list[Example] = []
        passes = 0
        while True:
            shards = list(own)
            rng.shuffle(shards)
            produced = read = 0
            for sample in share(read_tar_samples(shards, source.skips)):
                read += 1
                example = to_example(
                    sample,
                    task=source.name,
                    label_key=source.label_key,
                    prompt=source.prompt,
                    sample_rate=self.sample_rate,
                    skips=source.skips,
                    label_join=source.label_join,
                )
                if example is None:
                    continue
                audio = crop(example.audio, self.max_samples, rng)
                cropped = audio.shape[0] < example.audio.shape[0]
                for target in example.targets:  # several captions: one example each
                    produced += 1
                    item = Example(
                        example.key, audio, example.prompt, [target], source.name, cropped
                    )
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(item)
                        continue
                    pick = rng.randrange(len(buffer))
                    buffer[pick], item = item, buffer[pick]
                    yield item
            passes += 1
            if produced == 0 and not whole:
                # Raising on this reader alone would leave the other DDP ranks waiting for it
                # at their next collective: this reader takes the whole set instead, and only
                # a set with nothing usable anywhere is an error (on every reader alike).
                log.warning(
                    "training set %s: reader %d of %d got no usable sample from its part "
                    "(%d sample(s) in %d of the set's %d shard(s); skipped so far: %s); it "
                    "reads the whole set instead, so this reader repeats clips the others "
                    "also train on",
                    source.name,
                    slot + 1,
                    slots,
                    read,
                    len(own),
                    len(source.shards),
                    source.skips.summary() or "none",
                )
                own, share, whole = list(source.shards), (lambda samples: samples), True
                continue
            if produced == 0:
                reader = f", read whole by reader {slot + 1} of {slots}" if slots > 1 else ""
                raise RuntimeError(
                    f"training set {source.name} yielded no usable samples from "
                    f"{len(own)} shard(s){reader} "
                    f"({source.skips.summary() or 'empty shards'}); "
                    "check the shards and the label_key in the task file"
                )
            if passes == 1 and source.skips.total:
                log.warning("%s: skipped %s in one pass", source.name, source.skips.summary())

    def __iter__(self) -> Iterator[dict]:
        slot, slots = _process_slot(self.ranks)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The loader takes one batch from each worker in turn, worker 0 first. After `offset`
        # batches, the next one was due from reader `offset % workers`: worker w takes the
        # part of the reader `(w + offset) % workers` and skips the batches it had given,
        # so the resumed stream is the uninterrupted one, batch for batch.
        offset = self.offset if self.exact else 0
        role = (worker + offset) % workers
        slot += role - worker
        given = len(range(role, offset, workers))
        rng = random.Random(f"{self.seed}-{slot}" + ("" if self.exact else f"-{self.offset}"))
        streams = [
            self._examples(s, random.Random(rng.random()), slot, slots) for s in self.sources
        ]
        indices = range(len(streams))
        listed = [len(s.skips.entries) for s in self.sources]

        def newly_skipped() -> dict[str, list[dict[str, str]]]:
            """The clips skipped since the last batch, for the run's list of them."""
            clips = {}
            for i, source in enumerate(self.sources):
                if len(source.skips.entries) > listed[i]:
                    clips[source.name] = source.skips.entries[listed[i] :]
                    listed[i] = len(source.skips.entries)
            return clips

        buffer: list[Example] = []
        while True:
            (choice,) = rng.choices(indices, weights=self.weights)
            buffer.append(next(streams[choice]))
            if len(buffer) >= self.sort_buffer:
                # The short batch of a sorted buffer holds its longest clips: dropping it would
                # under-sample long-clip datasets against their prob, so it starts the next one.
                carry: list[Example] = []
                for batch in length_buckets(buffer, self.batch_size, rng):
                    if len(batch) < self.batch_size:
                        carry = batch
                    elif given > 0:
                        given -= 1  # trained on before the resume: drawn, not collated
                    else:
                        collated = collate(batch, text=self.text, digest=self.digest)
                        collated["skipped_clips"] = newly_skipped()
                        yield collated
                buffer = carry


class EvalSet(IterableDataset):
    """One test set, read in shard order, split across ranks/workers, in length-sorted batches.

    Clips are encoded whole, as the challenge evaluates them; ``max_seconds`` (off by
    default) keeps only the start of longer clips. Each batch carries, under ``skipped``,
    the samples this reader dropped since its previous batch (``{set: {reason: n}}``), so
    the counts reach the process that scores the set whatever the number of workers. Each
    reader ends with a batch of no clips marked ``finished``, carrying its last counts.
    """

    def __init__(
        self,
        source: DatasetSource,
        *,
        batch_size: int,
        sample_rate: int,
        max_seconds: float | None,
        sort_buffer: int,
        limit: int | None = None,
        text: Callable[..., dict[str, Any]] | None = None,
        digest: Callable[[torch.Tensor], str] | None = None,
    ):
        super().__init__()
        self.source = source
        self.text = text
        self.digest = digest
        self.batch_size = batch_size
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate) if max_seconds else 0
        self.sort_buffer = max(sort_buffer, batch_size)
        self.limit = limit
        self.ranks: tuple[int, int] | None = None  # (rank, world size), set by the datamodule

    def __iter__(self) -> Iterator[dict]:
        slot, slots = _process_slot(self.ranks)
        source = self.source
        # Every reader walks every shard; only the first counts broken shards, once.
        shard_skips = source.skips if slot == 0 else SkipCounter(source.name)
        # Counts from an earlier pass over this source were reported then.
        reported = Counter(source.skips.counts)
        listed = len(source.skips.entries)

        def with_skips(batch: dict) -> dict:
            nonlocal listed
            fresh = source.skips.counts - reported
            reported.update(fresh)
            batch["skipped"] = {source.name: dict(fresh)} if fresh else {}
            clips = source.skips.entries[listed:]
            listed = len(source.skips.entries)
            batch["skipped_clips"] = {source.name: clips} if clips else {}
            return batch

        buffer: list[Example] = []
        for index, sample in enumerate(read_tar_samples(source.shards, shard_skips)):
            if self.limit is not None and index >= self.limit:
                break
            if index % slots != slot:
                continue
            example = to_example(
                sample,
                task=source.name,
                label_key=source.label_key,
                prompt=source.prompt,
                sample_rate=self.sample_rate,
                skips=source.skips,
                label_join=source.label_join,
            )
            if example is None:
                continue
            # Cut at the start, the same every time: the features stay reusable (not `cropped`).
            example.audio = crop(example.audio, self.max_samples, None)
            buffer.append(example)
            if len(buffer) >= self.sort_buffer:
                for batch in length_buckets(buffer, self.batch_size, None):
                    yield with_skips(
                        collate(batch, references=True, text=self.text, digest=self.digest)
                    )
                buffer = []
        for batch in length_buckets(buffer, self.batch_size, None):
            yield with_skips(collate(batch, references=True, text=self.text, digest=self.digest))
        # The end of this reader's share of the set, with the skips since its last batch:
        # once every reader's marker is in, the set's answers are complete in this process.
        yield with_skips({**empty_batch(), "finished": [source.name]})
        if source.skips.total:
            log.warning("%s: skipped %s", source.name, source.skips.summary())


class EvalSuite(IterableDataset):
    """Every test set of a task, one after the other, through one loader.

    One loader instead of one per set: worker processes start once per evaluation rather than
    once per test set (forking a process that holds a GPU context and a decoder costs about a
    second each time). Batches never mix sets; each row names its set under ``tasks``.
    """

    def __init__(self, sets: Sequence[EvalSet]):
        super().__init__()
        self.sets = list(sets)

    def __iter__(self) -> Iterator[dict]:
        for eval_set in self.sets:
            yield from eval_set


def empty_batch() -> dict:
    """A batch of no clips (it only carries skip counts)."""
    return {
        "audio": torch.zeros(0, 1),
        "audio_mask": torch.zeros(0, 1, dtype=torch.long),
        "prompts": [],
        "keys": [],
        "tasks": [],
        "references": [],
    }
