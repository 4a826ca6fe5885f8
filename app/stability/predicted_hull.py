"""The predicted hull of a screened chemical system: known compounds plus the predicted-stable ones.

After a screen of, say, Li-Fe-O, the question is what the phase diagram would look like if the
predictions hold: the reference's DFT energies, plus every screened composition the model puts
below the known hull (e_above_hull < 0) at its predicted energy. pymatgen's PhaseDiagram builds
the new hull; its vertices are the answer, each marked known or predicted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.chemistry.formula import parse_formula
from app.errors import DomainError
from app.stability.assess import too_many_elements
from app.stability.hull import lower_facets
from app.stability.reference import HullReference


@dataclass(frozen=True)
class Candidate:
    composition: str  # canonical key
    formation_energy: float  # predicted, eV/atom (the formation_energy_mp model's value)
    e_above_hull: float  # against the known hull; only negative ones can change the hull
    p_stable: float | None


def predicted_hull(
    reference: HullReference, elements: Sequence[str], candidates: Iterable[Candidate]
) -> dict[str, Any]:
    """The predicted hull; DomainError ``too_many_elements_for_hull`` past the hull limit (a
    10-element screen's hull kept a core busy for over nine minutes)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    system = sorted(set(elements))
    refused = too_many_elements(system)
    if refused is not None:
        raise DomainError(refused.pop("code"), refused.pop("message"), **refused)
    entries = [PDEntry(Composition({element: 1}), 0.0, name=element, attribute=None) for element in system]
    for position in reference.within(system):
        composition = Composition(reference.amounts[position])
        energy = float(reference.energies[position]) * composition.num_atoms
        entries.append(PDEntry(composition, energy, name=reference.keys[position], attribute="known"))
    # Known compounds keep their DFT energy; an element is 0 by definition, whatever a model says.
    below = [
        c
        for c in candidates
        if c.e_above_hull < 0
        and reference.energy_of(c.composition) is None
        and len(parse_formula(c.composition).elements) > 1
    ]
    for candidate in below:
        composition = Composition(parse_formula(candidate.composition).amount_dict)
        energy = candidate.formation_energy * composition.num_atoms
        entries.append(PDEntry(composition, energy, name=candidate.composition, attribute=candidate))
    diagram = PhaseDiagram(on_the_lower_hull(entries, system))
    phases = []
    for entry in diagram.stable_entries:
        predicted = isinstance(entry.attribute, Candidate)
        phases.append(
            {
                "composition": entry.name,
                "fractions": {e: round(entry.composition.get_atomic_fraction(e), 6) for e in system},
                "formation_energy": round(entry.energy_per_atom, 6),
                "source": "predicted"
                if predicted
                else ("reference" if entry.attribute == "known" else "element"),
                "p_stable": entry.attribute.p_stable if predicted else None,
            }
        )
    phases.sort(key=lambda phase: [phase["fractions"][e] for e in system])
    return {
        "chemsys": "-".join(system),
        "reference": reference.describe(),
        "candidates_below_known_hull": len(below),
        "phases": phases,
    }


def on_the_lower_hull(entries: list[Any], system: Sequence[str]) -> list[Any]:
    """The entries that are vertices of the lower hull (the elements always): PhaseDiagram's
    stable entries come out the same, from a few entries instead of every compound of the system
    (most of its time is pymatgen's work per entry). Every entry where qhull cannot tell."""
    fractions = np.array([[entry.composition.get_atomic_fraction(e) for e in system] for entry in entries])
    energies = np.array([entry.energy_per_atom for entry in entries])
    facets = lower_facets(fractions, energies)
    if facets is None:
        return entries
    kept = set(np.unique(facets).tolist()) | set(range(len(system)))  # the elements come first
    return [entry for index, entry in enumerate(entries) if index in kept]
