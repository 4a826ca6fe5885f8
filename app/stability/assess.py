"""A predicted formation energy against the reference hull: ``e_above_hull`` and ``p_stable``.

``value`` = predicted formation energy - hull energy at the same composition (eV/atom; negative:
predicted below the known hull). The hull is DFT data, so the value's uncertainty is the model's
calibrated sigma, and ``p_stable`` = P(true energy <= hull) = Phi(-value / sigma) under that
Gaussian. Compositions with an element that no reference compound contains get no value (the
hull there would be the bare elements, not a comparison with known compounds) and say why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.stability.hull import HullCache
from app.stability.reference import HullReference

E_ABOVE_HULL = "e_above_hull"
# The model whose predictions are compared with the hull: it must share the reference's DFT
# energies (Materials Project), which is why the OQMD formation enthalpy is not used.
SOURCE_PROPERTY = "formation_energy_mp"
UNIT = "eV/atom"
# Columns a screen carries beside e_above_hull (sortable and filterable like properties):
# the probability of being stable, and 1.0 where the composition is in the reference.
DERIVED_COLUMNS = ("p_stable", "known")


@dataclass(frozen=True, slots=True)
class StabilityPrediction:
    """Shaped like PropertyPrediction (same first six fields, same order), plus the hull's answer."""

    value: float | None
    unit: str
    model: str
    version: str
    uncertainty: float | None
    cached: bool
    p_stable: float | None
    decomposition: dict[str, float] | None  # competing phases -> share of the atoms
    known: bool  # the composition itself is in the reference
    reference: dict[str, str]  # name and sha256 (first 12) of the hull data
    error: dict[str, Any] | None = None  # why there is no value (elements outside the reference)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def p_stable(value: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """P(on or below the hull) for Gaussian errors of width sigma; a step where sigma is unknown."""
    from scipy.special import ndtr  # the standard normal CDF, vectorised (scipy comes with pymatgen)

    value = np.asarray(value, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        probability = ndtr(-value / sigma)
    step = np.where(value <= 0, 1.0, 0.0)
    probability = np.where(np.isfinite(sigma) & (sigma > 0), probability, step)
    return np.where(np.isfinite(value), probability, np.nan)


class StabilityAssessor:
    def __init__(self, reference: HullReference, hulls: HullCache | None = None) -> None:
        # pymatgen's phase-diagram module takes ~1 s to import: paid here, at start-up, rather than
        # by the first request (or screen) that needs a hull.
        import pymatgen.analysis.phase_diagram  # noqa: F401

        self.reference = reference
        self.hulls = hulls or HullCache(reference)
        self._described = reference.describe()
        self._elements = reference.elements

    def outside(self, elements: frozenset[str]) -> list[str]:
        return sorted(elements - self._elements)

    def hull_ready(self, systems: Sequence[frozenset[str]]) -> bool:
        """Whether every system's hull is already built (then assessing is cheap enough inline)."""
        return all(self.hulls.has(system) for system in systems)

    def hull_energies(self, amounts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The reference hull's energy at each composition (NaN where an element is outside it).

        Rows are grouped by chemical system, so each system's hull is evaluated once per call.
        """
        return self._hull_energies_and_facets(amounts)[0]

    def hull_energy_matrix(self, elements: Sequence[str], amounts: np.ndarray) -> np.ndarray:
        """Hull energies of amount rows [n, len(elements)] of one chemical system (an enumeration)."""
        system = frozenset(elements)
        if not system <= self._elements:
            return np.full(len(amounts), np.nan)
        hull = self.hulls.get(system)
        columns = [list(elements).index(element) for element in hull.elements]
        counts = np.asarray(amounts, dtype=np.float64)[:, columns]
        return hull.energy(counts / counts.sum(axis=1, keepdims=True))[0]

    @staticmethod
    def above_hull(
        predicted: np.ndarray, sigma: np.ndarray, hull_energy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(e_above_hull, p_stable) from predicted energies, their sigma and the hull energies."""
        above = np.asarray(predicted, dtype=np.float64) - hull_energy
        return above, p_stable(above, np.asarray(sigma, dtype=np.float64))

    def _hull_energies_and_facets(
        self, amounts: Sequence[Mapping[str, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        count = len(amounts)
        energies = np.full(count, np.nan)
        facets = np.full(count, -1, dtype=np.int64)
        groups: dict[frozenset[str], list[int]] = {}
        for row, composition in enumerate(amounts):
            groups.setdefault(frozenset(composition), []).append(row)
        for system, rows in groups.items():
            if not system <= self._elements:
                continue
            hull = self.hulls.get(system)
            energies[rows], facets[rows] = hull.energy(hull.fractions([amounts[row] for row in rows]))
        return energies, facets

    def assess(
        self,
        keys: Sequence[str],
        amounts: Sequence[Mapping[str, float]],
        sources: Sequence[Any],  # the source model's PropertyPrediction per row
    ) -> list[StabilityPrediction]:
        """One answer per row, with its decomposition, for /predict and /predict/batch."""
        predicted = np.array([np.nan if s.value is None else s.value for s in sources], dtype=np.float64)
        sigma = np.array(
            [np.nan if s.uncertainty is None else s.uncertainty for s in sources], dtype=np.float64
        )
        hull_energy, facets = self._hull_energies_and_facets(amounts)
        above, probability = self.above_hull(predicted, sigma, hull_energy)
        answers: list[StabilityPrediction] = []
        for row, (key, composition, source) in enumerate(zip(keys, amounts, sources, strict=True)):
            known = self.reference.energy_of(key) is not None
            missing = self.outside(frozenset(composition))
            if missing or not math.isfinite(above[row]):
                error = None
                if missing:
                    error = {
                        "code": "outside_hull_reference",
                        "message": f"no compound of the hull reference contains {', '.join(missing)}",
                        "elements": missing,
                    }
                answers.append(
                    StabilityPrediction(
                        None,
                        UNIT,
                        source.model,
                        source.version,
                        None,
                        source.cached,
                        None,
                        None,
                        known,
                        self._described,
                        error,
                    )
                )
                continue
            hull = self.hulls.get(frozenset(composition))
            fractions = hull.fractions([composition])[0]
            answers.append(
                StabilityPrediction(
                    value=float(above[row]),
                    unit=UNIT,
                    model=source.model,
                    version=source.version,
                    uncertainty=source.uncertainty,
                    cached=source.cached,
                    p_stable=float(probability[row]),
                    decomposition=hull.decomposition(fractions, int(facets[row])),
                    known=known,
                    reference=self._described,
                )
            )
        return answers
