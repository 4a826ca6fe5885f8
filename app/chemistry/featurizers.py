"""Composition featurizers shared by training and serving (one code path, numpy, whole batches).

CONTRACT:
- ``get_featurizer(spec)`` for spec in ``FEATURE_SPECS`` ("ef", "pa", "ef+pa").
- ``featurizer.transform(formulas, dtype=np.float32) -> np.ndarray`` of shape [n, width].
- ``featurizer.name``, ``.version``, ``.labels`` (len == width), ``.width``, ``.elements``
  (the element set whose formulas it can featurize).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

from app.chemistry.elements import EF_ELEMENT_SET, EF_ELEMENTS
from app.chemistry.formula import ParsedFormula
from app.chemistry.physical_attributes import PhysicalAttributeFeaturizer
from app.chemistry.ragged import RaggedBatch

FEATURE_SPECS: tuple[str, ...] = ("ef", "pa", "ef+pa")


class Featurizer(Protocol):
    name: str
    version: str
    labels: tuple[str, ...]

    @property
    def elements(self) -> frozenset[str]: ...

    @property
    def width(self) -> int: ...

    def transform(self, formulas: Sequence[ParsedFormula], dtype: type = np.float32) -> np.ndarray: ...


class BatchFeaturizer(Featurizer, Protocol):
    """A featurizer that can work on an already flattened batch (lets ``ef+pa`` flatten once)."""

    def transform_batch(self, batch: RaggedBatch) -> np.ndarray: ...


_EF_COLUMN: dict[str, int] = {symbol: i for i, symbol in enumerate(EF_ELEMENTS)}


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
        return self.transform_batch(RaggedBatch.from_formulas(formulas)).astype(dtype, copy=False)

    def transform_batch(self, batch: RaggedBatch) -> np.ndarray:
        columns = batch.element_indices(_EF_COLUMN, self.name)
        # bincount on flat (row, column) cells: adds, so a repeated element still sums correctly.
        cells = np.bincount(
            batch.rows * self.width + columns, weights=batch.fractions, minlength=len(batch) * self.width
        )
        return cells.reshape(len(batch), self.width)


@dataclass(frozen=True, eq=False)
class ConcatenatedFeaturizer:
    """Several featurizers side by side, e.g. ``ef+pa`` = the EF vector followed by the PA vector."""

    parts: tuple[BatchFeaturizer, ...]

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts)

    @property
    def version(self) -> str:
        return "+".join(p.version for p in self.parts)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for p in self.parts for label in p.labels)

    @property
    def elements(self) -> frozenset[str]:
        return frozenset.intersection(*(p.elements for p in self.parts))

    @property
    def width(self) -> int:
        return sum(p.width for p in self.parts)

    def transform(self, formulas: Sequence[ParsedFormula], dtype: type = np.float32) -> np.ndarray:
        return self.transform_batch(RaggedBatch.from_formulas(formulas)).astype(dtype, copy=False)

    def transform_batch(self, batch: RaggedBatch) -> np.ndarray:
        return np.concatenate([p.transform_batch(batch) for p in self.parts], axis=1)


# Built on first use: PA reads its element table from package data.
_FACTORIES: dict[str, Callable[[], BatchFeaturizer]] = {
    "ef": ElementFractionFeaturizer,
    "pa": PhysicalAttributeFeaturizer,
    "ef+pa": lambda: ConcatenatedFeaturizer((get_featurizer("ef"), get_featurizer("pa"))),
}
assert tuple(_FACTORIES) == FEATURE_SPECS


@cache
def get_featurizer(spec: str) -> BatchFeaturizer:
    try:
        factory = _FACTORIES[spec]
    except KeyError:
        raise ValueError(f"unknown feature set {spec!r}; choose one of {FEATURE_SPECS}") from None
    return factory()


def leading_element_fractions(spec: str) -> int:
    """How many of the first columns of ``spec``'s features are element fractions: the ef block
    where the spec starts with it (``ef``, ``ef+pa``), else 0. The attention network's tokens."""
    return ElementFractionFeaturizer().width if spec.split("+")[0] == "ef" else 0
