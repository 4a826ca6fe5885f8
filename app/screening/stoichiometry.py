"""Enumerated integer stoichiometries straight into the featurizers and canonical keys.

An enumeration chunk is an int array [n, k] over a fixed element tuple. Building one
ParsedFormula per row (dicts, validation, a key via rational arithmetic) costs ~40 µs; this
module builds the featurizers' own input, a RaggedBatch, with numpy, and the canonical keys from
precomputed string pieces, so enumeration keeps up with ONNX Runtime. The featurizers then run
their usual ``transform_batch``: the same code path as every parsed formula.

Both shortcuts rely on the rows being primitive integer vectors (what enumerate.py yields)
with at most MAX_KEY_ATOMS atoms: then the canonical key is exactly the integer formula in key
element order. tests/screening/test_stoichiometry.py holds keys and features to
formula_from_amounts + transform on whole spaces.
"""

from __future__ import annotations

import re

import numpy as np

from app.chemistry.formula import MAX_KEY_ATOMS, canonical_key
from app.chemistry.ragged import RaggedBatch


class StoichiometryEncoder:
    """Keys and ragged batches for amount arrays over one element tuple (sorted by atomic number)."""

    def __init__(self, elements: tuple[str, ...], max_atoms: int) -> None:
        if max_atoms > MAX_KEY_ATOMS:
            raise ValueError(f"max_atoms {max_atoms} exceeds the integer-key limit {MAX_KEY_ATOMS}")
        self.elements = elements
        self._symbols = np.array(elements, dtype=object)
        # The key's element order, asked of canonical_key itself: with every amount 1 the key is
        # the bare symbols in that order ("LiMnCoOF").
        ordered = re.findall(r"[A-Z][a-z]*", canonical_key(elements, [1] * len(elements)))
        self._key_order = [elements.index(symbol) for symbol in ordered]
        # pieces[column][amount]: "" for an absent element, the symbol alone for 1, else symbol+n.
        self._pieces = [
            np.array(["", symbol, *(f"{symbol}{n}" for n in range(2, max_atoms + 1))], dtype=object)
            for symbol in elements
        ]

    def keys(self, amounts: np.ndarray) -> list[str]:
        """Canonical keys (identical to ParsedFormula.canonical_key) of primitive integer rows."""
        # One object-array concatenation per element column: ~0.2 µs a row, against ~2 µs for a
        # per-row "".join.
        keys = np.full(len(amounts), "", dtype=object)
        for column in self._key_order:
            keys = keys + self._pieces[column][amounts[:, column]]
        return keys.tolist()

    def batch(self, amounts: np.ndarray) -> RaggedBatch:
        """The RaggedBatch that RaggedBatch.from_formulas would build from the parsed formulas."""
        present = amounts > 0
        counts = present.sum(axis=1).astype(np.int64)
        rows, columns = np.nonzero(present)  # row-major: each row's entries contiguous, by Z
        starts = np.zeros_like(counts)
        np.cumsum(counts[:-1], out=starts[1:])
        totals = amounts.sum(axis=1)
        # Integer totals are exact, so these are the very floats ParsedFormula.fractions holds.
        fractions = amounts[rows, columns] / totals[rows]
        return RaggedBatch(
            counts=counts,
            starts=starts,
            rows=rows.astype(np.int64),
            symbols=tuple(self._symbols[columns]),
            fractions=fractions.astype(np.float64),
        )
