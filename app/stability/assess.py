"""A predicted formation energy against the reference hull: ``e_above_hull`` and ``p_stable``.

``value`` = predicted formation energy - hull energy at the same composition (eV/atom; negative:
predicted below the known hull). A known stable compound is measured against the hull of the
other compounds (app/stability/hull.py says why), so its value is a predicted decomposition
enthalpy, and ``reference_value`` is the reference's own (DFT) answer beside it. The hull is DFT
data, so the value's uncertainty is the model's calibrated sigma, and ``p_stable`` = P(true
energy <= hull): Phi(-value / sigma) under that Gaussian, mapped through the model's
validation-fitted curve where its manifest has one (StabilityCalibration: the errors are
heavy-tailed, so the bare Gaussian is overconfident at both ends). Compounds with an element that
no reference compound contains get no value (the hull there would be the bare elements, not a
comparison with known compounds) and say why.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from app.errors import DomainError
from app.inference.manifest import StabilityCalibration
from app.inference.results import Interval
from app.stability.hull import HullCache, SystemHull
from app.stability.reference import HullReference

E_ABOVE_HULL = "e_above_hull"
# The model whose predictions are compared with the hull: it must share the reference's DFT
# energies (Materials Project), which is why the OQMD formation enthalpy is not used.
SOURCE_PROPERTY = "formation_energy_mp"
UNIT = "eV/atom"
# Columns a screen carries beside e_above_hull (sortable and filterable like properties):
# the probability of being stable, and 1.0 where the composition is in the reference.
DERIVED_COLUMNS = ("p_stable", "known")
# Every name a screen accepts for stability (to compute, rank or filter by).
SCREEN_NAMES = (E_ABOVE_HULL, *DERIVED_COLUMNS)
# The largest chemical system a hull is built for: qhull's cost grows steeply with the dimension,
# and one request must not take a core for seconds. On the shipped reference (2026-12-02, one core):
# 7 elements 40-390 ms (Li-Mn-Fe-Co-Ni-P-O, 1,407 compounds: 390 ms); 8 elements 2-4 s
# (Li-Mn-Fe-Co-Ni-P-S-O, 1,586: 4.2 s). 17 of its 85,014 compounds have 8 or 9 elements.
MAX_HULL_ELEMENTS = 7


def models_to_run(
    properties: Sequence[str] | None,
    served: Collection[str],
    stability_available: bool,
    derived_names: Collection[str] = (E_ABOVE_HULL,),
) -> tuple[list[str] | None, bool]:
    """(the model properties to run, whether stability is computed) for a request's properties.

    The one rule for /predict and screens: stability is computed when asked for (or when every
    property is), its source model then runs too, and asking for it where it cannot be computed
    is an unknown property that says what is missing. Screens also accept its columns
    (``derived_names`` with DERIVED_COLUMNS) as names to rank and filter by.
    """
    available = stability_available and SOURCE_PROPERTY in served
    asked = [name for name in properties or () if name in derived_names]
    if asked and not available:
        lacking = "hull reference" if SOURCE_PROPERTY in served else f"{SOURCE_PROPERTY} model"
        raise DomainError(
            "unknown_property",
            f"property {asked[0]!r} needs the {SOURCE_PROPERTY} model and a hull reference; "
            f"this service has no {lacking}",
            property=asked[0],
            available=sorted(served),
        )
    wanted = available and (properties is None or bool(asked))
    if properties is None:
        return None, wanted
    to_run = [name for name in properties if name not in derived_names]
    unknown = [name for name in to_run if name not in served]
    if unknown:  # named here, where the derived names are known too, so the list is complete
        listed = sorted([*served, *derived_names]) if available else sorted(served)
        raise DomainError(
            "unknown_property",
            f"unknown property {unknown[0]!r}; available: {', '.join(listed) or 'none'}",
            property=unknown[0],
            available=listed,
        )
    if wanted and SOURCE_PROPERTY not in to_run:
        to_run.append(SOURCE_PROPERTY)
    return to_run, wanted


def too_many_elements(system: Collection[str]) -> dict[str, Any] | None:
    """The error body for a system past MAX_HULL_ELEMENTS (for a row, or a screen's predicted hull)."""
    if len(system) <= MAX_HULL_ELEMENTS:
        return None
    return {
        "code": "too_many_elements_for_hull",
        "message": f"{len(system)} elements; hulls are built for at most {MAX_HULL_ELEMENTS}",
        "limit": MAX_HULL_ELEMENTS,
    }


@dataclass(frozen=True, slots=True)
class StabilityPrediction:
    """Shaped like PropertyPrediction (the same fields, in to_dict's order), plus the hull's answer."""

    value: float | None
    unit: str
    model: str
    version: str
    uncertainty: float | None
    interval: Interval | None  # the source model's interval, moved with the value onto the hull's scale
    cached: bool
    in_domain: bool | None  # the source model's: its formation energy is what may be extrapolated
    domain_warning: dict[str, str] | None
    p_stable: float | None
    decomposition: dict[str, float] | None  # competing phases -> share of the atoms
    known: bool  # the composition itself is in the reference
    reference: dict[str, str]  # name and sha256 (first 12) of the hull data
    # A known compound's own reference (DFT) energy above the same hull: what value predicts.
    reference_value: float | None = None
    error: dict[str, Any] | None = None  # why there is no value (elements outside the reference)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def p_stable(
    value: np.ndarray, sigma: np.ndarray, calibration: StabilityCalibration | None = None
) -> np.ndarray:
    """P(on or below the hull): the Gaussian probability for errors of width sigma, through
    ``calibration`` where given; a step where sigma is unknown."""
    from scipy.special import ndtr  # the standard normal CDF, vectorised (scipy comes with pymatgen)

    value = np.asarray(value, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        probability = ndtr(-value / sigma)
    if calibration is not None:
        probability = calibration.apply(probability)
    step = np.where(value <= 0, 1.0, 0.0)
    probability = np.where(np.isfinite(sigma) & (sigma > 0), probability, step)
    return np.where(np.isfinite(value), probability, np.nan)


class StabilityAssessor:
    def __init__(
        self,
        reference: HullReference,
        hulls: HullCache | None = None,
        calibration: StabilityCalibration | None = None,  # the source model's (its manifest)
    ) -> None:
        # pymatgen's phase-diagram module takes ~1 s to import: paid here, at start-up, rather than
        # by the first request (or screen) that needs a hull.
        import pymatgen.analysis.phase_diagram  # noqa: F401

        self.reference = reference
        self.hulls = hulls or HullCache(reference)
        self.calibration = calibration
        self._described = reference.describe()
        self._elements = reference.elements

    def describe_p_stable(self) -> str:
        """How p_stable is read: "gaussian", or the digest of the source model's curve."""
        return "gaussian" if self.calibration is None else f"curve {self.calibration.digest}"

    def hull_ready(self, amounts: Sequence[Mapping[str, float]]) -> bool:
        """Whether every hull these compositions are measured on is built (then assessing is cheap
        enough inline)."""
        for composition in amounts:
            system = frozenset(composition)
            if self.why_not(system) is None and not self.hulls.ready(system, [composition]):
                return False
        return True

    def why_not(self, system: frozenset[str]) -> dict[str, Any] | None:
        """Why a composition of ``system`` gets no e_above_hull (an error body), or None if it does.

        The one place the two rules live: every element of a compound must be in some reference
        compound (else the hull would be the bare elements), and at most MAX_HULL_ELEMENTS
        elements (a hull's cost grows steeply with its dimension: 12 elements took minutes).
        """
        missing = sorted(system - self._elements)
        if missing and len(system) > 1:  # a bare element is its own hull's terminal point, known or not
            return {
                "code": "outside_hull_reference",
                "message": f"no compound of the hull reference contains {', '.join(missing)}",
                "elements": missing,
            }
        return too_many_elements(system)

    def hull_energies(self, amounts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The reference hull's energy at each composition (NaN where there is none: ``why_not``).

        Rows are grouped by chemical system, so each system's hull is evaluated once per call.
        """
        return self._hull_energies_and_facets(amounts)[0]

    def hull_energy_matrix(self, elements: Sequence[str], amounts: np.ndarray) -> np.ndarray:
        """Hull energies of amount rows [n, len(elements)] (an enumeration of one chemical system).

        Rows are grouped by which elements they hold, each group on its own sub-system's hull, so
        a row answers exactly what /predict answers for the same composition.
        """
        amounts = np.asarray(amounts, dtype=np.float64)
        energies = np.full(len(amounts), np.nan)
        patterns, group = np.unique(amounts > 0, axis=0, return_inverse=True)
        for index, pattern in enumerate(patterns):
            system = frozenset(element for element, present in zip(elements, pattern, strict=True) if present)
            if self.why_not(system) is not None:
                continue
            rows = np.flatnonzero(group.reshape(-1) == index)
            columns = [list(elements).index(element) for element in sorted(system)]  # the hull's order
            counts = amounts[np.ix_(rows, columns)]
            energies[rows] = self.hulls.evaluate(system, counts / counts.sum(axis=1, keepdims=True))[0]
        return energies

    def above_hull(
        self,
        predicted: np.ndarray,
        sigma: np.ndarray,
        hull_energy: np.ndarray,
        elements: np.ndarray,
        inside: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(e_above_hull, p_stable) from predicted energies, their sigma and the hull energies.

        ``elements``: element count per row. A pure element is the hull's own terminal point, 0 by
        definition and certainly on the hull, whatever a model predicts for it. ``inside``: the
        source model's training-domain flag per row (1.0, 0.0; None: not recorded); outside it
        p_stable is NaN, as the interval is: its sigma was calibrated on compositions unlike it.
        """
        above = np.asarray(predicted, dtype=np.float64) - hull_energy
        probability = p_stable(above, np.asarray(sigma, dtype=np.float64), self.calibration)
        if inside is not None:
            probability = np.where(np.asarray(inside) == 0.0, np.nan, probability)
        element = (np.asarray(elements) == 1) & np.isfinite(hull_energy)
        return np.where(element, 0.0, above), np.where(element, 1.0, probability)

    def known(self, keys: Sequence[str | None]) -> np.ndarray:
        """1.0 where the composition is in the reference (elements always are), else 0.0."""
        return np.array(
            [key is not None and self.reference.energy_of(key) is not None for key in keys], float
        )

    def _hull_energies_and_facets(
        self, amounts: Sequence[Mapping[str, float]]
    ) -> tuple[np.ndarray, np.ndarray, list[SystemHull | None]]:
        """(hull energy, facet, the hull it was measured on) per row; NaN, -1, None where none."""
        count = len(amounts)
        energies = np.full(count, np.nan)
        facets = np.full(count, -1, dtype=np.int64)
        hulls: list[SystemHull | None] = [None] * count
        groups: dict[frozenset[str], list[int]] = {}
        for row, composition in enumerate(amounts):
            groups.setdefault(frozenset(composition), []).append(row)
        for system, rows in groups.items():
            if self.why_not(system) is not None:
                continue
            fractions = self.hulls.get(system).fractions([amounts[row] for row in rows])
            energies[rows], facets[rows], used = self.hulls.evaluate(system, fractions)
            for row, hull in zip(rows, used, strict=True):
                hulls[row] = hull
        return energies, facets, hulls

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
        hull_energy, facets, hulls = self._hull_energies_and_facets(amounts)
        sizes = np.array([len(composition) for composition in amounts])
        inside = np.array([np.nan if s.in_domain is None else float(s.in_domain) for s in sources])
        above, probability = self.above_hull(predicted, sigma, hull_energy, sizes, inside)
        known = self.known(keys)
        answers: list[StabilityPrediction] = []
        for row, (composition, source) in enumerate(zip(amounts, sources, strict=True)):
            answer = StabilityPrediction(
                value=None,
                unit=UNIT,
                model=source.model,
                version=source.version,
                uncertainty=None,
                interval=None,
                cached=source.cached,
                in_domain=source.in_domain,
                domain_warning=source.domain_warning,
                p_stable=None,
                decomposition=None,
                known=bool(known[row]),
                reference=self._described,
                error=self.why_not(frozenset(composition)),
            )
            hull = hulls[row]
            if hull is not None and math.isfinite(above[row]):
                fractions = hull.fractions([composition])[0]
                dft = self.reference.energy_of(keys[row])  # an element's is 0, as is its hull
                element = sizes[row] == 1  # on the hull by definition: no uncertainty at all
                interval = source.interval
                if interval is not None:  # e_above_hull = energy - hull energy: the same shift
                    interval = (
                        Interval(0.0, 0.0, interval.level)
                        if element
                        else interval.shifted(float(above[row]) - source.value)
                    )
                answer = replace(
                    answer,
                    value=float(above[row]),
                    uncertainty=0.0 if element else source.uncertainty,
                    interval=interval,
                    p_stable=None if math.isnan(probability[row]) else float(probability[row]),
                    decomposition=hull.decomposition(fractions, int(facets[row])),
                    reference_value=None if dft is None else dft - float(hull_energy[row]),
                )
            answers.append(answer)
        return answers
