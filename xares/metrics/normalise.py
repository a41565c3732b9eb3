"""Text normalisation applied to predictions and references before scoring."""

from __future__ import annotations

import re
import string
import unicodedata

_STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")
# Multi-label strings look like "Dog ; Cat": the labels, not the separator, carry meaning.
_SPACED_SEPARATOR = re.compile(r"\s*;\s*")


def normalise_text(text: object, keep_punctuation: bool = False) -> str:
    """Normalise ``text`` the way the XARES-LLM protocol scores it.

    NFKC, lower-case, ``-`` to space, ASCII punctuation removed, whitespace collapsed and
    stripped. With ``keep_punctuation`` (multi-label strings) punctuation stays and the
    whitespace around each ``;``-separated label is removed. Non-strings go through
    ``str()``; ``None`` becomes ``""``.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    text = unicodedata.normalize("NFKC", text).lower().replace("-", " ")
    if keep_punctuation:
        text = _SPACED_SEPARATOR.sub(";", text)
    else:
        text = text.translate(_STRIP_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()
