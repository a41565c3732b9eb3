"""One way to name a value by its content: SHA-256 over its JSON with sorted keys.

Test-set identities, evaluation keys and configuration hashes all use it, so two of them
agree on what "the same" means (a value that JSON cannot hold is written as its ``str``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(value: Any, digits: int | None = None) -> str:
    """The hex SHA-256 of ``value``'s sorted-key JSON, cut to ``digits`` when given."""
    text = json.dumps(value, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest if digits is None else digest[:digits]
