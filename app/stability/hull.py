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
# A compound this close to the lower hull (eV/atom) is handed to PhaseDiagram: far below any DFT
# energy's precision, far above qhull's rounding.
HULL_TOLERANCE = 1e-6
LOWER_FACET_SLOPE = 1e-12  # a facet whose normal has no downward part is a vertical wall, not the floor


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
    positions = [position for position in reference.within(order) if position not in exclude]
    fractions = np.array(
        [[reference.amounts[p].get(e, 0.0) for e in order] for p in positions], dtype=np.float64
    ).reshape(len(positions), len(order))
    fractions /= np.maximum(fractions.sum(axis=1, keepdims=True), 1e-300)
    kept = on_or_below_lower_hull(
        np.vstack([np.eye(len(order)), fractions]),
        np.concatenate([np.zeros(len(order)), reference.energies[positions]]),
    )[len(order) :]
    entries = [PDEntry(Composition({element: 1}), 0.0) for element in order]
    for position in np.asarray(positions, dtype=np.int64)[kept]:
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


def on_or_below_lower_hull(fractions: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Which points (atomic fractions [n, elements], eV/atom; the elements among them at 0, as
    build_hull passes them) lie on or below their lower hull.

    Why: PhaseDiagram spends most of its time on pymatgen Composition work per entry (sorting,
    reduced formulas), ~16 ms for Li-Fe-O's 104 compounds, and a cold /predict pays for one hull.
    The lower hull of a point set is the lower hull of the points on it, so PhaseDiagram is given
    only those (every point within HULL_TOLERANCE of the hull is kept, coplanar ones included):
    the same hull, from a few entries. One scipy ConvexHull decides; where qhull cannot (too few or
    degenerate points), every point is kept.
    """
    from scipy.spatial import ConvexHull, QhullError

    everything = np.ones(len(energies), dtype=bool)
    # The elements sit at 0, so the hull is never above 0: a compound above it is not a candidate,
    # and leaving it out keeps qhull's upper hull (work PhaseDiagram never needs) to one facet.
    candidates = energies <= HULL_TOLERANCE
    dimension = fractions.shape[1]
    if dimension < 2 or candidates.sum() <= dimension + 1:
        return everything
    points = np.column_stack([fractions[:, 1:], energies])  # the first fraction follows from the others
    try:
        hull = ConvexHull(points[candidates])
    except QhullError:
        return everything
    normals, offsets = hull.equations[:, :-1], hull.equations[:, -1]
    lower = normals[:, -1] < -LOWER_FACET_SLOPE  # outward normal pointing down in energy
    if not lower.any():
        return everything
    # Each lower facet as energy = a . x + b; the lower hull is their maximum (it is convex).
    slopes = -normals[lower, :-1] / normals[lower, -1:]
    intercepts = -offsets[lower] / normals[lower, -1]
    hull_energy = (points[:, :-1] @ slopes.T + intercepts).max(axis=1)
    return energies <= hull_energy + HULL_TOLERANCE


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
