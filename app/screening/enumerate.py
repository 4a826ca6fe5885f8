"""Exact, streaming enumeration of the compositions of a chemical system.

A composition is a vector of integer amounts over the system's elements. Every fractional
composition has exactly one *primitive* integer representative (gcd of the amounts == 1), so
enumerating only primitive vectors removes duplicates by construction (Fe2O3 is listed, Fe4O6 is
not) without a seen-set that would grow with the space. ``max_atoms`` bounds the atoms of that
reduced formula.

The count is known before anything is generated, by Möbius inversion over the common divisor:
the positive j-tuples summing to s number C(s-1, j-1); those whose gcd is a multiple of d are d
times a tuple summing to s/d, so the primitive ones number Σ_{d|s} μ(d)·C(s/d-1, j-1).

Order is fixed (element subsets by size then position, then total atoms, then lexicographic
cuts), so row ``i`` of a space is the same in every process: screening jobs resume at a row
index and Dask partitions are row ranges.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from math import comb, gcd

import numpy as np
from pymatgen.core import Element

from app.chemistry.formula import FormulaError

# Largest accepted max_atoms: the count sums over every total up to it, and no real screen needs
# reduced formulas with more atoms (a binary at 1000 atoms is already ~300,000 compositions).
MAX_ATOMS_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Block:
    """All primitive compositions over one element subset with one total number of atoms."""

    columns: tuple[int, ...]  # indices into ChemicalSpace.elements
    total: int
    count: int


@dataclass(frozen=True)
class ChemicalSpace:
    elements: tuple[str, ...]  # sorted by atomic number: "O-Li" and "Li-O" are the same space
    max_atoms: int
    include_subsystems: bool = True

    @classmethod
    def from_chemsys(
        cls,
        chemsys: str,
        max_atoms: int,
        include_subsystems: bool = True,
        allowed_elements: Collection[str] | None = None,
    ) -> ChemicalSpace:
        """Parse Materials Project syntax ("Li-Fe-P-O"); refuse what no model could featurize."""
        return cls(parse_chemsys(chemsys, allowed_elements), max_atoms, include_subsystems)

    def __post_init__(self) -> None:
        if not 1 <= self.max_atoms <= MAX_ATOMS_LIMIT:
            raise FormulaError(
                "invalid_max_atoms",
                f"max_atoms must be between 1 and {MAX_ATOMS_LIMIT}, got {self.max_atoms}",
                max_atoms=self.max_atoms,
                limit=MAX_ATOMS_LIMIT,
            )

    @property
    def chemsys(self) -> str:
        return "-".join(self.elements)

    @property
    def subset_sizes(self) -> range:
        """How many elements a composition has: 1..k with sub-systems, else exactly k."""
        width = len(self.elements)
        return range(1 if self.include_subsystems else width, width + 1)

    def subset_count(self, size: int) -> int:
        """Compositions of ONE subset of ``size`` elements (the same for every such subset).

        Closed form, so that a refused enumeration costs microseconds, not seconds (an 86-element
        space with max_atoms 1000 took 1.7 s of CPU before its 413): summing the Möbius inversion
        of ``primitive_count`` over totals n <= N, the inner sums are hockey sticks,
        sum_{m <= N/d} C(m - 1, size - 1) = C(N // d, size), so the count is
        sum_{d} mu(d) C(N // d, size) over d <= N / size.
        """
        mobius = _mobius_table(self.max_atoms)
        return sum(
            mobius[d] * comb(self.max_atoms // d, size)
            for d in range(1, self.max_atoms // size + 1)
            if mobius[d]
        )

    def count(self) -> int:
        """Closed form: sum over subset sizes j of C(k, j) x (compositions of one j-subset)."""
        width = len(self.elements)
        return sum(comb(width, size) * self.subset_count(size) for size in self.subset_sizes)

    def iter_blocks(self) -> Iterator[Block]:
        """The space as blocks (one subset, one total) with their sizes, lazily, in row order."""
        for size in self.subset_sizes:
            for columns in itertools.combinations(range(len(self.elements)), size):
                for total in range(size, self.max_atoms + 1):
                    count = primitive_count(total, size)
                    if count:
                        yield Block(columns, total, count)

    def iter_amounts(
        self, start: int = 0, stop: int | None = None, chunk_size: int = 4096
    ) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` as int64 arrays [n, len(elements)] (0 = element absent), n <= chunk_size.

        Memory stays at one chunk whatever the size of the space; whole blocks before ``start``
        are skipped by their counts without being generated.
        """
        stop = self.count() if stop is None else min(stop, self.count())
        pending: list[np.ndarray] = []
        pending_rows = 0
        for piece in self._pieces(start, stop, chunk_size):
            pending.append(piece)
            pending_rows += len(piece)
            while pending_rows >= chunk_size:
                merged = np.concatenate(pending)
                yield merged[:chunk_size]
                rest = merged[chunk_size:]
                pending, pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)
        if pending_rows:
            yield np.concatenate(pending)

    def _pieces(self, start: int, stop: int, chunk_size: int) -> Iterator[np.ndarray]:
        width = len(self.elements)
        position = 0  # row index of the first composition of the current subset / block
        for size in self.subset_sizes:
            per_subset = self.subset_count(size)
            if position + comb(width, size) * per_subset <= start:  # the whole size class
                position += comb(width, size) * per_subset
                continue
            for columns in itertools.combinations(range(width), size):
                if position >= stop:
                    return
                if position + per_subset <= start:
                    position += per_subset
                    continue
                for total in range(size, self.max_atoms + 1):
                    count = primitive_count(total, size)
                    if position >= stop:
                        return
                    if position + count > start:
                        skip = max(0, start - position)
                        keep = min(count, stop - position) - skip
                        for parts in _compositions((), 0, total, size, skip, chunk_size):
                            parts = parts[:keep]
                            keep -= len(parts)
                            piece = np.zeros((len(parts), width), dtype=np.int64)
                            piece[:, columns] = parts
                            yield piece
                            if keep == 0:
                                break
                    position += count


def parse_chemsys(chemsys: str, allowed_elements: Collection[str] | None = None) -> tuple[str, ...]:
    """ "Li-Fe-P-O" -> ("Li", "O", "P", "Fe") sorted by atomic number, or a FormulaError naming the part."""
    symbols = [part.strip() for part in chemsys.split("-")]
    if not chemsys.strip() or any(not symbol for symbol in symbols):
        raise FormulaError(
            "invalid_chemsys",
            f"chemical system {chemsys!r} must be element symbols joined by '-', e.g. 'Li-Fe-P-O'",
            chemsys=chemsys,
        )
    for symbol in symbols:
        if not Element.is_valid_symbol(symbol):
            raise FormulaError(
                "unknown_element",
                f"{symbol!r} in chemical system {chemsys!r} is not an element symbol",
                element=symbol,
                chemsys=chemsys,
            )
        if allowed_elements is not None and symbol not in allowed_elements:
            raise FormulaError(
                "unsupported_element",
                f"element {symbol!r} in chemical system {chemsys!r} is outside the models' domain",
                element=symbol,
                chemsys=chemsys,
            )
    duplicates = sorted({symbol for symbol in symbols if symbols.count(symbol) > 1})
    if duplicates:
        raise FormulaError(
            "duplicate_element",
            f"element {duplicates[0]!r} appears twice in chemical system {chemsys!r}",
            element=duplicates[0],
            chemsys=chemsys,
        )
    return tuple(sorted(symbols, key=lambda symbol: Element(symbol).Z))


@lru_cache(maxsize=65_536)
def primitive_count(total: int, parts: int) -> int:
    """Positive integer ``parts``-tuples summing to ``total`` whose gcd is 1."""
    return _coprime_count(0, total, parts)


def _coprime_count(prefix_gcd: int, total: int, parts: int) -> int:
    """Positive ``parts``-tuples summing to ``total`` whose gcd together with ``prefix_gcd`` is 1.

    Möbius inversion over the common divisor d of the prefix and the total (gcd(0, n) = n: an
    empty prefix constrains nothing).
    """
    if parts < 1 or total < parts:
        return 1 if parts == 0 and total == 0 and prefix_gcd == 1 else 0
    common = gcd(prefix_gcd, total)
    return sum(
        _mobius(divisor) * comb(total // divisor - 1, parts - 1)
        for divisor in range(1, common + 1)
        if common % divisor == 0 and _mobius(divisor)
    )


@lru_cache(maxsize=8)
def _mobius_table(limit: int) -> tuple[int, ...]:
    """mu(0..limit) by a sieve (mu(0) unused)."""
    mobius = [1] * (limit + 1)
    prime = [True] * (limit + 1)
    for p in range(2, limit + 1):
        if prime[p]:
            for multiple in range(p, limit + 1, p):
                if multiple > p:
                    prime[multiple] = False
                mobius[multiple] = -mobius[multiple]
            for multiple in range(p * p, limit + 1, p * p):
                mobius[multiple] = 0
    mobius[0] = 0
    return tuple(mobius)


def _mobius(n: int) -> int:
    sign, factor = 1, 2
    while factor * factor <= n:
        if n % factor == 0:
            n //= factor
            if n % factor == 0:
                return 0  # a squared prime factor
            sign = -sign
        factor += 1
    return -sign if n > 1 else sign


# Generating and dropping up to this many compositions is cheaper than descending another level.
_LINEAR_SKIP_LIMIT = 1 << 16


def _compositions(
    prefix: tuple[int, ...], prefix_gcd: int, total: int, parts: int, skip: int, chunk_size: int
) -> Iterator[np.ndarray]:
    """Primitive compositions (prefix + positive ``parts``-tuples summing to ``total``), in
    lexicographic order, from the ``skip``-th on, as int64 arrays of <= chunk_size rows.

    Skipping is by counting: the first amount is fixed value by value and whole sub-trees are
    stepped over by their closed-form sizes, so resuming in the middle of a block of billions
    costs microseconds; only a small remainder is generated and dropped.
    """
    if skip and parts > 1 and comb(total - 1, parts - 1) > _LINEAR_SKIP_LIMIT:
        for first in range(1, total - parts + 2):
            first_gcd = gcd(prefix_gcd, first)
            size = _coprime_count(first_gcd, total - first, parts - 1)
            if skip >= size:
                skip -= size
                continue
            yield from _compositions((*prefix, first), first_gcd, total - first, parts - 1, skip, chunk_size)
            skip = 0
        return
    for rows in _tails(prefix_gcd, total, parts, chunk_size):
        if skip >= len(rows):
            skip -= len(rows)
            continue
        rows = rows[skip:]
        skip = 0
        if prefix:
            rows = np.concatenate([np.tile(np.array(prefix, dtype=np.int64), (len(rows), 1)), rows], axis=1)
        yield rows


def _tails(prefix_gcd: int, total: int, parts: int, chunk_size: int) -> Iterator[np.ndarray]:
    """Positive ``parts``-tuples summing to ``total``, coprime with ``prefix_gcd``, in lexicographic order.

    A composition of ``total`` into ``parts`` is a choice of parts-1 cut points in 1..total-1
    (lexicographic in the cuts is lexicographic in the amounts); itertools yields the cuts in C,
    numpy turns cuts into amounts and drops the rows that are not primitive.
    """
    if parts == 1:
        if gcd(prefix_gcd, total) == 1:
            yield np.full((1, 1), total, dtype=np.int64)
        return
    cuts = itertools.combinations(range(1, total), parts - 1)
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(cuts, chunk_size)), dtype=np.int64)
        if not len(flat):
            return
        bounds = flat.reshape(-1, parts - 1)
        edges = np.empty((len(bounds), parts + 1), dtype=np.int64)
        edges[:, 0] = 0
        edges[:, 1:-1] = bounds
        edges[:, -1] = total
        amounts = np.diff(edges, axis=1)
        primitive = amounts[np.gcd(np.gcd.reduce(amounts, axis=1), prefix_gcd) == 1]
        if len(primitive):
            yield primitive
