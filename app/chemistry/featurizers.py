"""Composition featurizers shared by training and serving (one code path, numpy, whole batches).

CONTRACT:
- ``get_featurizer(spec)`` for spec in ``FEATURE_SPECS`` ("ef", "pa", "ef+pa").
- ``featurizer.transform(formulas, dtype=np.float32) -> np.ndarray`` of shape [n, width].
- ``featurizer.name``, ``.version``, ``.labels`` (len == width), ``.width``, ``.elements``
  (the element set whose formulas it can featurize).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.chemistry.elements import EF_ELEMENT_SET, EF_ELEMENTS
from app.chemistry.formula import ParsedFormula

FEATURE_SPECS: tuple[str, ...] = ("ef", "pa", "ef+pa")


class Featurizer(Protocol):
    name: str
    version: str
    labels: tuple[str, ...]
    elements: frozenset[str]

    @property
    def width(self) -> int: ...

    def transform(self, formulas: Sequence[ParsedFormula], dtype: type = np.float32) -> np.ndarray: ...


def flatten(formulas: Sequence[ParsedFormula]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Ragged batch -> (row index per entry, element symbol per entry, fraction per entry)."""
    counts = np.fromiter((len(f.elements) for f in formulas), dtype=np.int64, count=len(formulas))
    rows = np.repeat(np.arange(len(formulas)), counts)
    symbols = [symbol for f in formulas for symbol in f.elements]
    fractions = np.fromiter(
        (x for f in formulas for x in f.fractions), dtype=np.float64, count=int(counts.sum())
    )
    return rows, symbols, fractions


@dataclass(frozen=True)
class ElementFractionFeaturizer:
    """EF: each element's share of all atoms, in the fixed 86-element order."""

    name: str = "ef"
    version: str = "1"
    labels: tuple[str, ...] = EF_ELEMENTS
    elements: frozenset[str] = EF_ELEMENT_SET

    @property
    def width(self) -> int:
        return len(self.labels)

    def transform(self, formulas: Sequence[ParsedFormula], dtype: type = np.float32) -> np.ndarray:
        column = {symbol: i for i, symbol in enumerate(EF_ELEMENTS)}
        rows, symbols, fractions = flatten(formulas)
        out = np.zeros((len(formulas), self.width), dtype=np.float64)
        # KeyError here means a caller skipped validation against ``elements``.
        columns = np.fromiter((column[s] for s in symbols), dtype=np.int64, count=len(symbols))
        np.add.at(out, (rows, columns), fractions)
        return out.astype(dtype, copy=False)


_REGISTRY: dict[str, Featurizer] = {"ef": ElementFractionFeaturizer()}


def get_featurizer(spec: str) -> Featurizer:
    try:
        return _REGISTRY[spec]
    except KeyError:
        raise ValueError(f"unknown feature set {spec!r}; choose one of {FEATURE_SPECS}") from None
