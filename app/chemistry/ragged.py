"""A batch of parsed formulas as flat numpy arrays, so featurizers work on whole batches at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain

import numpy as np

from app.chemistry.formula import ATOMIC_NUMBER, ParsedFormula


@dataclass(frozen=True)
class RaggedBatch:
    """Entry i is (formula ``rows[i]``, element ``symbols[i]``, ``fractions[i]``); each formula's
    entries are contiguous, starting at ``starts[row]`` and ``counts[row]`` long (never empty), so
    per-formula sums, minima and maxima are ``np.<ufunc>.reduceat(values, starts)``."""

    counts: np.ndarray  # int64 [n_formulas]
    starts: np.ndarray  # int64 [n_formulas]
    rows: np.ndarray  # int64 [n_entries]
    symbols: tuple[str, ...]  # [n_entries]
    fractions: np.ndarray  # float64 [n_entries]

    def __post_init__(self) -> None:
        if self.counts.size and self.counts.min() == 0:
            # reduceat cannot express an empty group; parse_formula never yields one.
            raise ValueError("cannot featurize a formula without elements")

    @classmethod
    def from_formulas(cls, formulas: Sequence[ParsedFormula]) -> RaggedBatch:
        counts = np.fromiter((len(f.elements) for f in formulas), dtype=np.int64, count=len(formulas))
        n_entries = int(counts.sum())
        starts = np.zeros_like(counts)
        np.cumsum(counts[:-1], out=starts[1:])
        rows = np.repeat(np.arange(len(formulas), dtype=np.int64), counts)
        symbols = tuple(chain.from_iterable(f.elements for f in formulas))
        fractions = np.fromiter(
            chain.from_iterable(f.fractions for f in formulas), dtype=np.float64, count=n_entries
        )
        return cls(counts=counts, starts=starts, rows=rows, symbols=symbols, fractions=fractions)

    def __len__(self) -> int:
        return len(self.counts)

    @cached_property
    def size_groups(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Formulas grouped by element count: (their rows [m], their entries [m, size]) per size.

        Within a group the batch is a regular block, and reductions along its axis 1 are about
        twice as fast as reduceat over the ragged arrays (measured on OQMD, 22 properties).
        """
        order = np.argsort(self.counts, kind="stable")
        sizes, first = np.unique(self.counts[order], return_index=True)
        groups = []
        for size, rows in zip(sizes, np.split(order, first[1:]), strict=True):
            groups.append((rows, self.starts[rows, None] + np.arange(size)))
        return tuple(groups)

    @cached_property
    def atomic_numbers(self) -> np.ndarray:
        """Each entry's atomic number, int64 [n_entries]: for per-element lookups in numpy."""
        return np.fromiter((ATOMIC_NUMBER[s] for s in self.symbols), dtype=np.int64, count=len(self.symbols))

    def element_indices(self, index: Mapping[str, int], featurizer: str) -> np.ndarray:
        """Each entry's position in a featurizer's element table; names every unsupported element."""
        try:
            return np.fromiter((index[s] for s in self.symbols), dtype=np.int64, count=len(self.symbols))
        except KeyError:
            unknown = sorted({s for s in self.symbols if s not in index})
            # Callers are expected to have validated against ``featurizer.elements`` when parsing.
            raise ValueError(f"featurizer {featurizer!r} has no data for element(s) {unknown}") from None
