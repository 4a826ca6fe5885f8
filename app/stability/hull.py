"""Convex hulls of the reference, one per chemical system, built once and evaluated fast.

pymatgen's PhaseDiagram builds a system's lower hull. Each hull facet then defines one affine
function of composition (its chemical potentials, as pymatgen's own ``get_facet_chempots``), and
because the lower hull is convex, the hull energy at any composition of the system is the largest
of those functions. Evaluating a hull is then one matrix product for a whole chunk of rows,
instead of a search for the containing facet row by row: a screen of a 4-element system pays
for its hull once, not per composition.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.stability.reference import HullReference

# Weights below this share of atoms are rounding, not a competing phase.
MIN_PHASE_FRACTION = 1e-6
DEFAULT_CACHED_SYSTEMS = 4096


@dataclass(frozen=True)
class SystemHull:
    elements: tuple[str, ...]  # the system's elements; the column order of every fractions array
    chempots: np.ndarray  # [facets, elements]: each facet's affine function
    facet_vertices: np.ndarray  # [facets, elements]: indices into vertex_names / vertex_fractions
    vertex_names: list[str]  # reduced formula of each hull vertex
    vertex_fractions: np.ndarray  # [vertices, elements]

    def fractions(self, amounts: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Atomic fractions [rows, elements] of compositions made of this system's elements."""
        column = {element: j for j, element in enumerate(self.elements)}
        out = np.zeros((len(amounts), len(self.elements)))
        for i, composition in enumerate(amounts):
            total = sum(composition.values())
            for element, amount in composition.items():
                out[i, column[element]] = amount / total
        return out

    def energy(self, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hull formation energy in eV/atom, the facet each row lies on) for every row."""
        heights = fractions @ self.chempots.T
        facet = np.argmax(heights, axis=1)
        return heights[np.arange(len(fractions)), facet], facet

    def decomposition(self, fractions: np.ndarray, facet: int) -> dict[str, float]:
        """The competing phases at one composition and their shares of its atoms."""
        vertices = self.facet_vertices[facet]
        weights = np.linalg.lstsq(self.vertex_fractions[vertices].T, fractions, rcond=None)[0]
        phases = {
            self.vertex_names[v]: float(w)
            for v, w in zip(vertices, weights, strict=True)
            if w > MIN_PHASE_FRACTION
        }
        total = sum(phases.values())
        # Six decimals: a share of atoms needs no more, and 0.75 reads better than 0.7500000000000001.
        return {name: round(share / total, 6) for name, share in sorted(phases.items(), key=lambda i: -i[1])}


def build_hull(
    reference: HullReference, elements: frozenset[str], exclude: frozenset[int] = frozenset()
) -> SystemHull:
    """The lower hull of ``elements`` from every reference compound inside it, elements at 0.

    ``exclude``: reference positions left out (a compound's decomposition enthalpy is measured
    against the hull of the others)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    order = tuple(sorted(elements))
    entries = [PDEntry(Composition({element: 1}), 0.0) for element in order]
    for position in reference.within(order):
        if position in exclude:
            continue
        composition = Composition(reference.amounts[position])
        entries.append(PDEntry(composition, float(reference.energies[position]) * composition.num_atoms))
    diagram = PhaseDiagram(entries)
    vertices = sorted({int(i) for facet in diagram.facets for i in facet})
    renumber = {old: new for new, old in enumerate(vertices)}
    vertex_fractions = np.array(
        [[diagram.qhull_entries[i].composition.get_atomic_fraction(e) for e in order] for i in vertices]
    )
    vertex_energies = np.array([diagram.qhull_entries[i].energy_per_atom for i in vertices])
    facet_vertices = np.array([[renumber[int(i)] for i in facet] for facet in diagram.facets], dtype=np.int64)
    chempots = np.array([np.linalg.solve(vertex_fractions[f], vertex_energies[f]) for f in facet_vertices])
    return SystemHull(
        elements=order,
        chempots=chempots.reshape(len(facet_vertices), len(order)),
        facet_vertices=facet_vertices.reshape(len(facet_vertices), len(order)),
        vertex_names=[diagram.qhull_entries[i].composition.reduced_formula for i in vertices],
        vertex_fractions=vertex_fractions,
    )


class HullCache:
    """Hulls by chemical system, least recently used dropped past ``max_systems``; thread-safe.

    Two threads asking for the same missing system may both build it (the result is the same);
    building outside the lock keeps one slow system from blocking every other.
    """

    def __init__(self, reference: HullReference, max_systems: int = DEFAULT_CACHED_SYSTEMS) -> None:
        self.reference = reference
        self.max_systems = max_systems
        self._hulls: OrderedDict[frozenset[str], SystemHull] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, elements: frozenset[str]) -> bool:
        with self._lock:
            return elements in self._hulls

    def get(self, elements: frozenset[str]) -> SystemHull:
        with self._lock:
            hull = self._hulls.get(elements)
            if hull is not None:
                self._hulls.move_to_end(elements)
                return hull
        hull = build_hull(self.reference, elements)
        with self._lock:
            self._hulls[elements] = hull
            while len(self._hulls) > self.max_systems:
                self._hulls.popitem(last=False)
        return hull
