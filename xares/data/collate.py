"""Batching: pad audio with masks, and group examples of similar length to cut padding."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from xares.data.samples import Example


def collate(
    examples: Sequence[Example],
    *,
    references: bool = False,
    text: Callable[..., dict[str, torch.Tensor]] | None = None,
    digest: Callable[[torch.Tensor], str] | None = None,
) -> dict[str, Any]:
    """Zero-padded audio ``[B, T]`` with mask; one target per row, or all references in eval.

    ``text`` (the model's :class:`~xares.models.text.TextEncoder`) adds the token ids, and
    ``digest`` a content id per clip for the feature cache (``None`` for a random crop); both
    run here, in the loader's workers, so the training step does neither.
    """
    lengths = [int(e.audio.shape[0]) for e in examples]
    audio = torch.zeros(len(examples), max(lengths))
    mask = torch.zeros(len(examples), max(lengths), dtype=torch.long)
    for row, example in enumerate(examples):
        audio[row, : lengths[row]] = example.audio
        mask[row, : lengths[row]] = 1
    prompts = [e.prompt for e in examples]
    batch = {
        "audio": audio,
        "audio_mask": mask,
        "prompts": prompts,
        "keys": [e.key for e in examples],
        "tasks": [e.task for e in examples],
    }
    if references:
        batch["references"] = [list(e.targets) for e in examples]
    else:
        batch["targets"] = [e.targets[0] for e in examples]
    if text is not None:
        batch.update(text(prompts, batch.get("targets")))
    if digest is not None:
        batch["clip_ids"] = [None if e.cropped else digest(e.audio) for e in examples]
    return batch


def length_buckets(
    examples: list[Example], batch_size: int, rng: random.Random | None
) -> Iterator[list[Example]]:
    """Sort a buffer by length and cut it into batches; shuffle batch order when ``rng`` is set."""
    ordered = sorted(examples, key=lambda e: e.audio.shape[0])
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    yield from batches
