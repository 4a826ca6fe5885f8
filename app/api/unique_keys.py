"""A JSON object that names a key twice is refused, not read as its last value.

JSON parsers disagree on which of two equal keys counts (RFC 8259 leaves it open), and every one
this service uses keeps the last silently: ``{"formula": "NaCl", "formula": "Fe2O3"}`` answered
for Fe2O3, and a screen whose ``filters`` were written twice kept only the second. A client that
sends that made a mistake it should hear about: 422 ``duplicate_key`` naming the key.
"""

from __future__ import annotations

import json
from typing import Any

from app.errors import DomainError


def loads_unique(raw: bytes | str) -> Any:
    """``json.loads`` that refuses a repeated key (DomainError ``duplicate_key``). Every way a
    document can be unreadable is a ValueError: malformed, not UTF-8, an integer of more than 4300
    digits, or nested past the recursion limit."""
    try:
        return json.loads(raw, object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def refuse_duplicate_keys(raw: bytes) -> None:
    """Raise ``duplicate_key`` if ``raw`` repeats a key in an object; any other problem of the
    document is left to the validator that reads it next (it words JSON errors its own way)."""
    try:
        loads_unique(raw)
    except ValueError:
        return


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DomainError(
                    "duplicate_key",
                    f"the JSON key {key!r} appears more than once in one object; send each key once",
                    key=key,
                )
            seen.add(key)
    return result
