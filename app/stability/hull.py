"""Convex hulls of the reference, one per chemical system, built once and evaluated fast.

pymatgen's PhaseDiagram builds a system's lower hull. Each hull facet then defines one affine
function of composition (its chemical potentials, as pymatgen's own ``get_facet_chempots``), and
because the lower hull is convex, the hull energy at any composition of the system is the largest
of those functions. Evaluating a hull is then one matrix product for a whole chunk of rows,
instead of a search for the containing facet row by row: a screen of a 4-element system pays
for its hull once, not per composition.

A composition that is itself a vertex of the reference hull (a known stable compound) is measured
against the hull of the *other* compounds (``HullCache.evaluate``): against a hull it defines
itself, every known stable compound would sit at 0 at best and its answer would only be the model's
error against its own DFT energy. Against its competitors it is Bartel's decomposition enthalpy
(negative: stable), the quantity the evaluation scores.
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
# Atomic fractions this close are the same composition (reduced formulas differ far more).
SAME_COMPOSITION = 1e-9
DEFAULT_CACHED_SYSTEMS = 4096
# A compound at most this far above 0 eV/atom (the elements' level) is handed to qhull as a
# candidate hull point: far below any DFT energy's precision, far above qhull's rounding.
HULL_TOLERANCE = 1e-6
LOWER_FACET_SLOPE = 1e-12  # a facet whose normal has no downward part is a vertical wall, not the floor
DEGENERATE_VOLUME = 1e-14  # |det| of a facet's vertex fractions below this: a flat simplex (as PhaseDiagram)


@dataclass(frozen=True)
class SystemHull:
    elements: tuple[str, ...]  # the system's elements; the column order of every fractions array
    chempots: np.ndarray  # [facets, elements]: each facet's affine function
    facet_vertices: np.ndarray  # [facets, elements]: indices into vertex_names / vertex_fractions
    vertex_names: list[str]  # each hull vertex's canonical key (the `composition` answers carry)
    vertex_fractions: np.ndarray  # [vertices, elements]
    # [vertices]: the reference position of each compound vertex, -1 for elements
    vertex_positions: np.ndarray

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

    def own_vertex(self, fractions: np.ndarray, facet: np.ndarray) -> np.ndarray:
        """For rows [n, elements] on ``facet`` (from ``energy``): the reference position of the
        compound vertex each row is (the same composition), -1 where it is none."""
        vertices = self.facet_vertices[facet]  # [rows, facet size]
        distance = np.abs(self.vertex_fractions[vertices] - fractions[:, None, :]).max(axis=2)
        same = distance < SAME_COMPOSITION
        positions = self.vertex_positions[vertices[np.arange(len(fractions)), same.argmax(axis=1)]]
        return np.where(same.any(axis=1), positions, -1)

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
    against the hull of the others).

    The facets come from one scipy ConvexHull (qhull, as inside pymatgen's PhaseDiagram) of the
    compounds at or below 0 eV/atom: PhaseDiagram itself spent ~70% of a build on pymatgen
    Composition work per entry (7 ms per system of real compounds, against ~2 ms now), and every
    cold /predict of a new system, or of a known stable compound, pays for a build. PhaseDiagram
    is still the judge: it builds the few hulls qhull cannot (too few or degenerate points), and
    a test compares both on 120 real systems.
    """
    order = tuple(sorted(elements))
    positions = np.array(
        [position for position in reference.within(order) if position not in exclude], dtype=np.int64
    )
    fractions = np.array(
        [[reference.amounts[p].get(e, 0.0) for e in order] for p in positions], dtype=np.float64
    ).reshape(len(positions), len(order))
    fractions /= np.maximum(fractions.sum(axis=1, keepdims=True), 1e-300)
    points = np.vstack([np.eye(len(order)), fractions])
    energies = np.concatenate([np.zeros(len(order)), reference.energies[positions]])
    # Each point's reference position; -1 for the elements (a reference row of a bare element too).
    compound = np.array([len(reference.amounts[p]) > 1 for p in positions], dtype=bool)
    point_positions = np.concatenate([np.full(len(order), -1), np.where(compound, positions, -1)])
    facets = lower_facets(points, energies)
    if facets is None:
        facets = _phase_diagram_facets(order, points, energies)
    vertices, facet_vertices = np.unique(facets, return_inverse=True)
    facet_vertices = facet_vertices.reshape(facets.shape)
    vertex_fractions, vertex_energies = points[vertices], energies[vertices]
    chempots = np.array([np.linalg.solve(vertex_fractions[f], vertex_energies[f]) for f in facet_vertices])
    return SystemHull(
        elements=order,
        chempots=chempots.reshape(len(facet_vertices), len(order)),
        facet_vertices=facet_vertices,
        vertex_names=[_point_name(reference, order, points, int(i), point_positions) for i in vertices],
        vertex_fractions=vertex_fractions,
        vertex_positions=point_positions[vertices],
    )


def lower_facets(fractions: np.ndarray, energies: np.ndarray) -> np.ndarray | None:
    """The lower hull's facets [facets, elements] as indices into the points (atomic fractions
    [n, elements] and eV/atom, the elements first at 0, as build_hull passes them); None where
    qhull cannot tell (too few or degenerate points).

    The elements sit at 0, so the hull is never above 0: a compound above it is left out, which
    keeps qhull's upper hull to one flat facet. Like PhaseDiagram, facets that are vertical walls
    or degenerate simplices (zero volume, from coplanar points) are not part of the floor.
    """
    from scipy.spatial import ConvexHull, QhullError

    dimension = fractions.shape[1]
    if dimension == 1:
        return np.zeros((1, 1), dtype=np.int64)  # a bare element: its own point is the hull
    candidates = np.flatnonzero(energies <= HULL_TOLERANCE)
    if len(candidates) <= dimension:
        return None
    points = np.column_stack([fractions[candidates, 1:], energies[candidates]])  # x0 follows from the rest
    try:
        hull = ConvexHull(points)
    except QhullError:
        return None
    lower = hull.equations[:, -2] < -LOWER_FACET_SLOPE  # outward normal pointing down in energy
    simplices = hull.simplices[lower]
    # A simplex with zero volume in composition space cannot define the hull's energy there.
    volumes = np.abs(np.linalg.det(fractions[candidates][simplices]))
    simplices = simplices[volumes > DEGENERATE_VOLUME]
    return candidates[simplices] if len(simplices) else None


def _phase_diagram_facets(order: tuple[str, ...], points: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """The lower facets as indices into the points, from pymatgen's PhaseDiagram: for the hulls
    qhull alone cannot build (too few or degenerate points)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    entries = [
        PDEntry(
            Composition({e: f for e, f in zip(order, fractions, strict=True) if f > 0}),
            float(energy),  # per atom: the fractions sum to one atom
            attribute=index,
        )
        for index, (fractions, energy) in enumerate(zip(points, energies, strict=True))
    ]
    diagram = PhaseDiagram(entries)
    # qhull_entries are the entries given above (the same objects): their attribute is the point.
    return np.array(
        [[int(diagram.qhull_entries[int(i)].attribute) for i in facet] for facet in diagram.facets],
        dtype=np.int64,
    ).reshape(len(diagram.facets), len(order))


def _point_name(
    reference: HullReference, order: tuple[str, ...], points: np.ndarray, point: int, positions: np.ndarray
) -> str:
    """A vertex's name as answers spell compositions: the reference's canonical key (Ca(OH)2 is
    CaH2O2 everywhere), the bare symbol for an element (O, not pymatgen's O2)."""
    position = int(positions[point])
    return reference.keys[position] if position >= 0 else order[int(np.argmax(points[point]))]


class HullCache:
    """Hulls by chemical system (and by the compound left out of it, for that compound's own
    answer), least recently used dropped past ``max_systems``; thread-safe.

    Two threads asking for the same missing system may both build it (the result is the same);
    building outside the lock keeps one slow system from blocking every other.
    """

    def __init__(self, reference: HullReference, max_systems: int = DEFAULT_CACHED_SYSTEMS) -> None:
        self.reference = reference
        self.max_systems = max_systems
        self._hulls: OrderedDict[tuple[frozenset[str], int], SystemHull] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, elements: frozenset[str], without: int = -1) -> SystemHull | None:
        """The hull if it is built, else None (nothing is built)."""
        with self._lock:
            return self._hulls.get((elements, without))

    def get(self, elements: frozenset[str], without: int = -1) -> SystemHull:
        """The hull of ``elements``; without the reference compound at position ``without`` if >= 0."""
        key = (elements, without)
        with self._lock:
            hull = self._hulls.get(key)
            if hull is not None:
                self._hulls.move_to_end(key)
                return hull
        hull = build_hull(self.reference, elements, frozenset({without}) if without >= 0 else frozenset())
        with self._lock:
            self._hulls[key] = hull
            while len(self._hulls) > self.max_systems:
                self._hulls.popitem(last=False)
        return hull

    def ready(self, elements: frozenset[str], amounts: Sequence[Mapping[str, float]]) -> bool:
        """Whether ``evaluate`` would build nothing for these compositions of the system: its hull
        is built, and so is the hull without each known stable compound among them."""
        hull = self.peek(elements)
        if hull is None:
            return False
        fractions = hull.fractions(amounts)
        own = hull.own_vertex(fractions, hull.energy(fractions)[1])
        return all(self.peek(elements, int(position)) is not None for position in np.unique(own[own >= 0]))

    def evaluate(
        self, elements: frozenset[str], fractions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[SystemHull]]:
        """(hull energy, facet, the hull each row was measured on) for rows [n, elements] of the
        system, each known stable compound against the hull of the others (module docstring)."""
        hull = self.get(elements)
        energy, facet = hull.energy(fractions)
        used = [hull] * len(fractions)
        own = hull.own_vertex(fractions, facet)
        for position in np.unique(own[own >= 0]):
            rows = np.flatnonzero(own == position)
            others = self.get(elements, int(position))
            energy[rows], facet[rows] = others.energy(fractions[rows])
            for row in rows:
                used[row] = others
        return energy, facet, used
