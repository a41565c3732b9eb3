"""Transcription metrics: iWER = max(0, 1 - WER) and iCER = max(0, 1 - CER).

Rates are corpus-level over normalised text: (substitutions + deletions + insertions)
summed over all pairs, divided by the summed reference length (words or characters). An
empty prediction is all deletions. Pairs whose normalised reference is empty are counted
here rather than by ``jiwer`` (older versions reject them): every unit of their prediction
is an insertion added to the errors, and an empty prediction matches perfectly. With no
reference units at all the score is 1.0 if there are no errors, else 0.0.
"""

from __future__ import annotations

from typing import Any

import jiwer
import numpy as np

from xares.metrics.base import Metric, PairStatistics, check_pairs
from xares.metrics.normalise import normalise_text


class _EditRate(Metric):
    """Edit-rate metric reported as ``max(0, 1 - rate)``; the rules are in the module doc."""

    def units(self, text: str) -> list[str]:
        raise NotImplementedError

    def align(self, references: list[str], hypotheses: list[str]) -> Any:
        """jiwer's alignment of pairs with non-empty references."""
        raise NotImplementedError

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        sums = self.pair_counts(predictions, references).sum(axis=0)
        return float(_score(sums))

    def pair_counts(self, predictions: list[Any], references: list[Any]) -> np.ndarray:
        """(errors, reference units) of each pair, from one jiwer alignment of them all."""
        counts = np.zeros((len(references), 2), dtype=np.float64)
        aligned, refs, hyps = [], [], []
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            ref, pred = normalise_text(ref), normalise_text(pred)
            if ref:
                aligned.append(i)
                refs.append(ref)
                hyps.append(pred)
            else:
                counts[i, 0] = len(self.units(pred))
        if refs:
            for i, chunks in zip(aligned, self.align(refs, hyps).alignments):
                for chunk in chunks:
                    ref_span = chunk.ref_end_idx - chunk.ref_start_idx
                    if chunk.type == "insert":
                        counts[i, 0] += chunk.hyp_end_idx - chunk.hyp_start_idx
                    elif chunk.type == "equal":
                        counts[i, 1] += ref_span
                    else:  # a substitution or deletion: errors over reference units
                        counts[i] += ref_span
        return counts

    def statistics(self, predictions: Any, references: Any) -> PairStatistics:
        predictions, references = check_pairs(self.name, predictions, references)
        return PairStatistics(self.pair_counts(predictions, references), _score)


def _score(sums: np.ndarray) -> np.ndarray:
    """``max(0, 1 - errors / units)`` of summed (errors, units); 1 or 0 without units."""
    errors, total = sums[..., 0], sums[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.maximum(0.0, 1.0 - errors / total)
    return np.where(total > 0, rate, np.where(errors == 0, 1.0, 0.0))


class iWER(_EditRate):
    """1 - word error rate (floored at 0); words are whitespace-separated tokens."""

    name = "iWER"

    def units(self, text: str) -> list[str]:
        return text.split()

    def align(self, references: list[str], hypotheses: list[str]) -> Any:
        return jiwer.process_words(references, hypotheses)


class iCER(_EditRate):
    """1 - character error rate (floored at 0); spaces count as characters, as in jiwer.cer."""

    name = "iCER"

    def units(self, text: str) -> list[str]:
        return list(text)

    def align(self, references: list[str], hypotheses: list[str]) -> Any:
        return jiwer.process_characters(references, hypotheses)
