"""What callers may pass as formulas and properties, turned into the lists both paths send on.

Shared by the HTTP client and the in-process path, so both accept exactly the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def as_formulas(formulas: str | Iterable[Any]) -> list[str]:
    """A list of formula strings from a list, tuple, pandas Series, numpy array or generator.

    One string is one formula (not its characters). A missing value (None, NaN: a blank cell in a
    spreadsheet column) becomes "" so it comes back as the service's own error row, like any other
    bad formula, instead of failing the call; other non-strings are written with ``str``.
    """
    if isinstance(formulas, str):
        return [formulas]
    texts = []
    for item in formulas:
        if isinstance(item, str):
            texts.append(item)
        elif item is None or (isinstance(item, float) and math.isnan(item)):
            texts.append("")
        else:
            texts.append(str(item))
    return texts


def as_properties(properties: str | Iterable[str] | None) -> list[str] | None:
    """None (every served property) or a non-empty list of property names; one string is one name."""
    if properties is None:
        return None
    names = [properties] if isinstance(properties, str) else [str(name) for name in properties]
    if not names:
        raise ValueError("properties: name at least one property, or pass None for every served one")
    return names
