"""Text normalisation applied to predictions and references before scoring."""

from __future__ import annotations

import functools
import re
import string
import unicodedata

_STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: object, keep_punctuation: bool = False) -> str:
    """Normalise ``text`` the way the XARES-LLM protocol scores it.

    NFKC, lower-case, ``-`` to space, ASCII punctuation removed, whitespace collapsed and
    stripped. ``keep_punctuation`` skips only the punctuation step: the challenge scores
    multi-label strings that way, so ``"dog; cat"`` keeps its space after the ``;``.
    Non-strings go through ``str()``; ``None`` becomes ``""``.
    """
    if text is None:
        return ""
    return _normalise(text if isinstance(text, str) else str(text), keep_punctuation)


# Labels repeat across a test set's thousands of pairs, and intervals and comparisons score
# the same answers again: each distinct text is normalised once.
@functools.lru_cache(maxsize=1 << 16)
def _normalise(text: str, keep_punctuation: bool) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("-", " ")
    if not keep_punctuation:
        text = text.translate(_STRIP_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()
