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

from xares.metrics.base import Metric
from xares.metrics.normalise import normalise_text


class _EditRate(Metric):
    """Edit-rate metric reported as ``max(0, 1 - rate)``; the rules are in the module doc."""

    def units(self, text: str) -> list[str]:
        raise NotImplementedError

    def measure(self, references: list[str], hypotheses: list[str]) -> tuple[int, int]:
        """Return (errors, reference units) for pairs with non-empty references."""
        raise NotImplementedError

    def compute(self, predictions: list[Any], references: list[Any]) -> float:
        refs, hyps, extra_insertions = [], [], 0
        for pred, ref in zip(predictions, references):
            ref, pred = normalise_text(ref), normalise_text(pred)
            if ref:
                refs.append(ref)
                hyps.append(pred)
            else:
                extra_insertions += len(self.units(pred))
        errors, total = self.measure(refs, hyps) if refs else (0, 0)
        errors += extra_insertions
        if total == 0:
            return 1.0 if errors == 0 else 0.0
        return max(0.0, 1.0 - errors / total)


def _counts(output: Any) -> tuple[int, int]:
    errors = output.substitutions + output.deletions + output.insertions
    return errors, output.substitutions + output.deletions + output.hits


class iWER(_EditRate):
    """1 - word error rate (floored at 0); words are whitespace-separated tokens."""

    name = "iWER"

    def units(self, text: str) -> list[str]:
        return text.split()

    def measure(self, references: list[str], hypotheses: list[str]) -> tuple[int, int]:
        return _counts(jiwer.process_words(references, hypotheses))


class iCER(_EditRate):
    """1 - character error rate (floored at 0); spaces count as characters, as in jiwer.cer."""

    name = "iCER"

    def units(self, text: str) -> list[str]:
        return list(text)

    def measure(self, references: list[str], hypotheses: list[str]) -> tuple[int, int]:
        return _counts(jiwer.process_characters(references, hypotheses))
