"""PA: the 145 physical attributes of Ward et al. (2016), for whole batches at once with numpy.

The values are those of matminer's Stoichiometry() (6) + ElementProperty.from_preset("magpie")
(132) + ValenceOrbital(props=["frac"]) (4) + IonProperty(fast=True) (3), in that order and under
matminer's labels; tests/chemistry/test_featurizers.py holds them to matminer at 1e-6 relative.
matminer itself is not imported here (it is heavy and dev-only): the per-element data come from
data/ward2016_elements.csv, extracted from it by scripts/build_element_tables.py.

Every statistic is a function of the fractional composition only, so formulas that share a
canonical key share a vector. matminer weighs by the amounts as written; that changes nothing but
the last bits of a mean, and the absolute tolerance of two ``np.isclose`` tests (mode ties,
charge neutrality) that we apply to fractions instead of amounts -- a difference that matters
only for fractions equal to within ~1e-8, which real formulas do not have.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from app.chemistry.formula import ParsedFormula
from app.chemistry.ragged import RaggedBatch

TABLE_PATH = Path(__file__).with_name("data") / "ward2016_elements.csv"

STOICHIOMETRY_NORMS: tuple[int, ...] = (0, 2, 3, 5, 7, 10)
MAGPIE_PROPERTIES: tuple[str, ...] = (
    "Number",
    "MendeleevNumber",
    "AtomicWeight",
    "MeltingT",
    "Column",
    "Row",
    "CovalentRadius",
    "Electronegativity",
    "NsValence",
    "NpValence",
    "NdValence",
    "NfValence",
    "NValence",
    "NsUnfilled",
    "NpUnfilled",
    "NdUnfilled",
    "NfUnfilled",
    "NUnfilled",
    "GSvolume_pa",
    "GSbandgap",
    "GSmagmom",
    "SpaceGroupNumber",
)
MAGPIE_STATISTICS: tuple[str, ...] = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
VALENCE_ORBITALS: tuple[str, ...] = ("s", "p", "d", "f")

PA_LABELS: tuple[str, ...] = (
    *(f"{p}-norm" for p in STOICHIOMETRY_NORMS),
    *(f"MagpieData {stat} {prop}" for prop in MAGPIE_PROPERTIES for stat in MAGPIE_STATISTICS),
    *(f"frac {orbital} valence electrons" for orbital in VALENCE_ORBITALS),
    "compound possible",
    "max ionic char",
    "avg ionic char",
)
assert len(PA_LABELS) == 145

# np.isclose's defaults: matminer uses them to find the most abundant elements (mode) and to
# call a sum of oxidation states neutral.
ISCLOSE_RTOL = 1e-5
ISCLOSE_ATOL = 1e-8
# Charge-neutral combinations are found by enumerating every combination of oxidation states of
# a formula (vectorised over the batch) up to this many per formula; beyond it a pruned search
# runs per formula. Real formulas stay far below (OQMD's worst needs 1,080).
MAX_ENUMERATED_COMBINATIONS = 1 << 15
# Combinations held in memory at once while enumerating (a few arrays of this many 8-byte values).
ENUMERATION_CHUNK = 1 << 20
# Partial sums in the pruned search are rounded to this many decimals to merge duplicates; the
# rounding error it adds (< 1e-12 per element) is negligible against ISCLOSE_ATOL.
PRUNED_SEARCH_DECIMALS = 12


@dataclass(frozen=True, eq=False)
class ElementTable:
    """Per-element data, one row per element with complete data (see build_element_tables.py)."""

    symbols: tuple[str, ...]
    magpie: np.ndarray  # float64 [n_elements, len(MAGPIE_PROPERTIES)]
    electronegativity: np.ndarray  # float64 [n_elements], pymatgen's Pauling X
    oxidation_states: np.ndarray  # float64 [n_elements, max_states], padded with 0
    n_oxidation_states: np.ndarray  # int64 [n_elements]; 0 = no common oxidation state
    index: dict[str, int]

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> ElementTable:
        with path.open(encoding="utf-8") as handle:
            records = list(csv.DictReader(line for line in handle if not line.startswith("#")))
        symbols = tuple(r["symbol"] for r in records)
        states = [[float(s) for s in r["oxidation_states"].split()] for r in records]
        width = max(len(s) for s in states)
        padded = np.zeros((len(states), width))
        for i, s in enumerate(states):
            padded[i, : len(s)] = s
        return cls(
            symbols=symbols,
            magpie=np.array([[float(r[p]) for p in MAGPIE_PROPERTIES] for r in records]),
            electronegativity=np.array([float(r["X"]) for r in records]),
            oxidation_states=padded,
            n_oxidation_states=np.array([len(s) for s in states], dtype=np.int64),
            index={s: i for i, s in enumerate(symbols)},
        )


@dataclass(frozen=True, eq=False)
class PhysicalAttributeFeaturizer:
    """PA: 145 Ward et al. attributes. Stateless apart from its element table."""

    table: ElementTable = field(default_factory=ElementTable.load)
    max_enumerated_combinations: int = MAX_ENUMERATED_COMBINATIONS
    name: str = "pa"
    # Bump when the maths or data/ward2016_elements.csv change: trained models record it.
    version: str = "1"
    labels: tuple[str, ...] = PA_LABELS

    @cached_property
    def elements(self) -> frozenset[str]:
        return frozenset(self.table.symbols)

    @property
    def width(self) -> int:
        return len(self.labels)

    def transform(self, formulas: Sequence[ParsedFormula], dtype: type = np.float32) -> np.ndarray:
        return self.transform_batch(RaggedBatch.from_formulas(formulas)).astype(dtype, copy=False)

    def transform_batch(self, batch: RaggedBatch) -> np.ndarray:
        """float64 [n_formulas, 145]."""
        if len(batch) == 0:
            return np.empty((0, self.width))
        element = batch.element_indices(self.table.index, self.name)
        magpie_stats, means = _magpie_statistics(batch, element, self.table.magpie)
        x = self.table.electronegativity[element]
        limit = self.max_enumerated_combinations
        return np.hstack(
            [
                _stoichiometry(batch),
                magpie_stats,
                _valence_fractions(means),
                _charge_balance_possible(batch, element, self.table, limit)[:, None],
                _max_ionic_character(batch, x)[:, None],
                _mean_ionic_character(batch, x)[:, None],
            ]
        )


def _stoichiometry(batch: RaggedBatch) -> np.ndarray:
    """Stoichiometry(): number of elements, then the p-norms of the atomic fractions."""
    columns = [
        batch.counts.astype(np.float64)
        if p == 0
        else np.add.reduceat(batch.fractions**p, batch.starts) ** (1.0 / p)
        for p in STOICHIOMETRY_NORMS
    ]
    return np.stack(columns, axis=1)


def _magpie_statistics(
    batch: RaggedBatch, element: np.ndarray, magpie: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ElementProperty (magpie): the six fraction-weighted statistics of each property.

    Returns ([n_formulas, n_properties * 6] ordered property-major like matminer's labels, the
    weighted means [n_formulas, n_properties]).
    """
    stats = np.empty((len(batch), magpie.shape[1], len(MAGPIE_STATISTICS)))
    column = {s: i for i, s in enumerate(MAGPIE_STATISTICS)}
    for rows, entries in batch.size_groups:
        values = magpie[element[entries]]  # [formulas, size, properties]
        fractions = batch.fractions[entries]  # [formulas, size]
        weights = fractions[..., None]
        minimum, maximum = values.min(axis=1), values.max(axis=1)
        mean = _ordered_sum(values * weights)
        # matminer's mode: the smallest value among the elements whose fraction is np.isclose to
        # the largest fraction (so Fe1Co1 takes the smaller of the two, not the first written).
        largest = fractions.max(axis=1, keepdims=True)
        top = np.abs(fractions - largest) <= ISCLOSE_ATOL + ISCLOSE_RTOL * largest
        by_name = {
            "minimum": minimum,
            "maximum": maximum,
            "range": maximum - minimum,
            "mean": mean,
            "avg_dev": _ordered_sum(np.abs(values - mean[:, None, :]) * weights),
            "mode": np.where(top[..., None], values, np.inf).min(axis=1),
        }
        for name, value in by_name.items():
            stats[rows, :, column[name]] = value
    means = stats[:, :, column["mean"]]
    return stats.reshape(len(batch), -1), means


def _ordered_sum(block: np.ndarray) -> np.ndarray:
    """Sum over axis 1, strictly left to right. ``ndarray.sum`` may group the terms differently
    for different block shapes (pairwise summation), and a formula's vector must not depend on
    which other formulas share its batch (tests check batch == row by row, bit for bit)."""
    total = np.zeros(block.shape[:1] + block.shape[2:])
    for j in range(block.shape[1]):
        total += block[:, j]
    return total


def _valence_fractions(means: np.ndarray) -> np.ndarray:
    """ValenceOrbital(props=["frac"]): mean s/p/d/f valence electrons over mean valence electrons."""
    column = {p: i for i, p in enumerate(MAGPIE_PROPERTIES)}
    total = means[:, column["NValence"]]
    return np.stack([means[:, column[f"N{o}Valence"]] / total for o in VALENCE_ORBITALS], axis=1)


def _max_ionic_character(batch: RaggedBatch, x: np.ndarray) -> np.ndarray:
    """max over element pairs of 1 - exp(-(dX)^2 / 4): the pair with the widest X gap wins."""
    gap = np.maximum.reduceat(x, batch.starts) - np.minimum.reduceat(x, batch.starts)
    return 1.0 - np.exp(-0.25 * gap**2)  # exactly 0 for one element, as in matminer


def _mean_ionic_character(batch: RaggedBatch, x: np.ndarray) -> np.ndarray:
    """sum over element pairs i < j of f_i f_j (1 - exp(-(X_i - X_j)^2 / 4))."""
    out = np.zeros(len(batch))
    for rows, entries in batch.size_groups:
        first, second = np.triu_indices(entries.shape[1], 1)  # the same pairs for every formula
        a, b = entries[:, first], entries[:, second]
        f = batch.fractions
        out[rows] = _ordered_sum(f[a] * f[b] * (1.0 - np.exp(-0.25 * (x[a] - x[b]) ** 2)))
    return out


def _charge_balance_possible(
    batch: RaggedBatch, element: np.ndarray, table: ElementTable, max_enumerated: int
) -> np.ndarray:
    """IonProperty(fast=True) "compound possible": can each element take one of its common
    oxidation states so that sum(state * fraction) is np.isclose to 0? One element: always."""
    n_states = table.n_oxidation_states[element]
    # float64 product: exact for every count we enumerate, and no overflow for huge formulas.
    combinations = np.multiply.reduceat(n_states.astype(np.float64), batch.starts)
    possible = batch.counts == 1
    searchable = (batch.counts >= 2) & (combinations > 0)  # no states at all: never neutral
    enumerate_rows = np.flatnonzero(searchable & (combinations <= max_enumerated))
    if enumerate_rows.size:
        possible[enumerate_rows] = _enumerate_neutral(batch, element, table, n_states, enumerate_rows)
    for row in np.flatnonzero(searchable & (combinations > max_enumerated)):
        entries = slice(batch.starts[row], batch.starts[row] + batch.counts[row])
        states = [table.oxidation_states[e, : table.n_oxidation_states[e]] for e in element[entries]]
        possible[row] = _pruned_neutral_search(states, batch.fractions[entries])
    return possible.astype(np.float64)


def _enumerate_neutral(
    batch: RaggedBatch,
    element: np.ndarray,
    table: ElementTable,
    n_states: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Try every combination of ``rows`` at once: combination c of a formula picks, for its j-th
    element, state (c // stride_j) % n_states_j, where stride_j is the product of n_states of the
    elements before it (mixed-radix digits)."""
    stride = np.ones(len(n_states), dtype=np.int64)
    running = np.ones(len(batch), dtype=np.int64)
    for j in range(int(batch.counts[rows].max())):
        live = rows[batch.counts[rows] > j]
        entry = batch.starts[live] + j
        stride[entry] = running[live]
        running[live] *= n_states[entry]

    n_combos = running[rows]
    result = np.zeros(len(rows), dtype=bool)
    chunk_ends = np.cumsum(n_combos)
    begin = 0
    while begin < len(rows):
        # Take formulas until ENUMERATION_CHUNK combinations (at least one formula).
        base = chunk_ends[begin - 1] if begin else 0
        end = max(begin + 1, int(np.searchsorted(chunk_ends, base + ENUMERATION_CHUNK, side="right")))
        chunk = rows[begin:end]
        counts = n_combos[begin:end]
        owner = np.repeat(np.arange(len(chunk)), counts)
        combo = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        first = batch.starts[chunk][owner]
        size = batch.counts[chunk][owner]
        charge = np.zeros(len(combo))
        for j in range(int(batch.counts[chunk].max())):
            live = np.flatnonzero(size > j)
            entry = first[live] + j
            state = (combo[live] // stride[entry]) % n_states[entry]
            charge[live] += table.oxidation_states[element[entry], state] * batch.fractions[entry]
        neutral_owner = owner[np.abs(charge) <= ISCLOSE_ATOL]
        result[begin + neutral_owner] = True
        begin = end
    return result


def _pruned_neutral_search(states: list[np.ndarray], fractions: np.ndarray) -> bool:
    """Same question for one formula with too many combinations to list: extend the set of
    reachable partial charges element by element, dropping those the remaining elements can no
    longer bring back to zero, and merging (rounded) duplicates."""
    contributions = [s * f for s, f in zip(states, fractions, strict=True)]
    # Reach of the elements after position i: [lowest, highest] charge they can still add.
    lows = np.append(np.cumsum([c.min() for c in contributions][::-1])[::-1][1:], 0.0)
    highs = np.append(np.cumsum([c.max() for c in contributions][::-1])[::-1][1:], 0.0)
    partial = np.zeros(1)
    for contribution, low, high in zip(contributions, lows, highs, strict=True):
        partial = (partial[:, None] + contribution[None, :]).ravel()
        keep = (partial + high >= -ISCLOSE_ATOL) & (partial + low <= ISCLOSE_ATOL)
        partial = np.unique(np.round(partial[keep], PRUNED_SEARCH_DECIMALS))
        if partial.size == 0:
            return False
    return bool(np.any(np.abs(partial) <= ISCLOSE_ATOL))
