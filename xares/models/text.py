"""Prompt and target text as padded token-id tensors, ready for the tensor-only splice.

Tokenising in the data-loader workers (the collate) instead of inside the training step keeps
the step free of Python loops over rows and of host-device synchronisation: the step receives
ids as tensors and places them with gathers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TEXT_KEYS = ("prompt_ids", "prompt_lengths", "target_ids", "target_lengths")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple > 1 else value


class TextEncoder:
    """Turns a batch's prompts (and targets + EOS) into right-padded id tensors with lengths.

    ``multiple`` rounds the padded widths up (8 by default) so that batches repeat a few shapes,
    which compiled graphs reuse instead of recompiling. Padding slots hold the pad id and are
    never attended to or scored. Picklable, so loader workers can carry it.
    """

    def __init__(self, tokenizer: Any, multiple: int = 8, cache_size: int = 4096):
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else self.eos)
        self.multiple = max(1, int(multiple))
        self.cache_size = cache_size
        self._cache: dict[str, list[int]] = {}

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens; prompts repeat, so they are cached."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = {}
        if missing:
            encoded = self.tokenizer(list(missing), add_special_tokens=False)["input_ids"]
            fresh = dict(zip(missing, encoded))
            for text, ids in fresh.items():
                if len(self._cache) < self.cache_size:
                    self._cache[text] = ids
        return [self._cache[t] if t in self._cache else fresh[t] for t in texts]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        width = round_up(max((len(r) for r in rows), default=0), self.multiple)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for row, values in enumerate(rows):
            ids[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        return ids, lengths

    def __call__(
        self, prompts: Sequence[str], targets: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        prompt_ids, prompt_lengths = self._pad(self.ids(prompts))
        if targets is None:
            target_rows: list[list[int]] = [[] for _ in prompts]
        else:
            target_rows = [ids + [self.eos] for ids in self.ids(targets)]
        target_ids, target_lengths = self._pad(target_rows)
        return {
            "prompt_ids": prompt_ids,
            "prompt_lengths": prompt_lengths,
            "target_ids": target_ids,
            "target_lengths": target_lengths,
        }

    def __getstate__(self):
        # Workers rebuild their own prompt cache; shipping a large one to each would be waste.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state
