"""The hull reference and hulls on their own: a hull known on paper, refused files, real DFT data."""

from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from app.chemistry.formula import parse_formula
from app.inference.results import PropertyPrediction
from app.stability.assess import MAX_HULL_ELEMENTS, StabilityAssessor, p_stable
from app.stability.hull import build_hull
from app.stability.reference import HullReferenceError, load_reference


def source(value: float, sigma: float | None = 0.1) -> PropertyPrediction:
    return PropertyPrediction(value, "eV/atom", "mp", "v1", sigma, None, False)


def test_a_two_element_hull_matches_the_one_drawn_on_paper(paper_reference):
    reference = load_reference(paper_reference)
    assessor = StabilityAssessor(reference)
    parsed = [parse_formula(text) for text in ("Li2O2", "LiO2", "Li2O3", "Li2O", "Li")]
    # Li2O2 predicted at its reference energy (above the hull), LiO2 below the hull (-1.0 there on
    # paper: Li2O -> O), Li2O3 exactly on it (-1.2 at x_O = 0.6), Li2O (known, stable) against the
    # hull of the others, and Li, whose model prediction (0.05) does not count: an element is the
    # hull's terminal point, 0 by definition.
    predicted = [source(-1.4), source(-1.2), source(-1.2), source(-1.9), source(0.05)]
    answers = assessor.assess([p.canonical_key for p in parsed], [p.amount_dict for p in parsed], predicted)
    above, below, on, stable, element = answers
    assert above.value == pytest.approx(0.1) and above.known is True
    assert above.decomposition == pytest.approx({"Li2O": 0.75, "O": 0.25})
    assert above.reference_value == pytest.approx(0.1)  # its own DFT energy sits 0.1 above the hull too
    assert below.value == pytest.approx(-0.2) and below.known is False and below.reference_value is None
    assert below.decomposition == pytest.approx({"Li2O": 0.5, "O": 0.5})
    assert below.p_stable == pytest.approx(p_stable(np.array([-0.2]), np.array([0.1]))[0])
    assert below.p_stable > 0.97 and above.p_stable < 0.2
    assert on.value == pytest.approx(0.0, abs=1e-12) and on.decomposition == pytest.approx(
        {"Li2O": 0.6, "O": 0.4}
    )
    assert on.p_stable == pytest.approx(0.5) and on.known is False
    # Without Li2O the hull at x_O = 1/3 runs Li -> Li2O2: -1.4 * (1/3) / (1/2). Against its own
    # point Li2O could never be below the hull, and its answer would be the model's error alone.
    hull_of_the_others = -1.4 * 2 / 3
    assert stable.known is True and stable.value == pytest.approx(-1.9 - hull_of_the_others)
    assert stable.reference_value == pytest.approx(-2.0 - hull_of_the_others)
    assert stable.decomposition == pytest.approx(
        {"LiO": 2 / 3, "Li": 1 / 3}
    )  # Li2O2: its key and stable.p_stable > 0.99
    assert element.value == 0.0 and element.p_stable == 1.0 and element.uncertainty == 0.0
    assert element.decomposition == pytest.approx({"Li": 1.0}) and element.known is True
    assert element.reference_value == 0.0
    assert all(
        answer.reference == {"name": "li-o.csv", "sha256": reference.sha256[:12]} for answer in answers
    )


def test_a_known_stable_compound_in_an_enumeration_is_measured_against_the_others_too(paper_reference):
    assessor = StabilityAssessor(load_reference(paper_reference))
    rows = [{"Li": 2, "O": 1}, {"Li": 1, "O": 1}, {"Li": 1, "O": 2}]
    expected = [-1.4 * 2 / 3, -1.5, -1.0]  # Li2O against Li -> Li2O2; the others against the full hull
    assert assessor.hull_energies(rows) == pytest.approx(expected)
    matrix = assessor.hull_energy_matrix(["O", "Li"], np.array([[1, 2], [1, 1], [2, 1]]))
    assert matrix == pytest.approx(expected)


def test_an_element_outside_the_reference_is_still_its_own_hull(paper_reference):
    assessor = StabilityAssessor(load_reference(paper_reference))
    (xenon,) = assessor.assess(["Xe"], [{"Xe": 1}], [source(0.3)])
    assert xenon.value == 0.0 and xenon.p_stable == 1.0 and xenon.error is None
    assert xenon.decomposition == {"Xe": 1.0}


def test_the_hull_ignores_compounds_of_other_systems_and_can_leave_one_out(paper_reference):
    reference = load_reference(paper_reference)
    hull = build_hull(reference, frozenset({"Li", "O"}))
    energy, _ = hull.energy(hull.fractions([{"Li": 1, "O": 1}]))
    assert energy[0] == pytest.approx(-1.5)
    without_li2o = build_hull(
        reference, frozenset({"Li", "O"}), exclude=frozenset({reference.keys.index("Li2O")})
    )
    energy, _ = without_li2o.energy(without_li2o.fractions([{"Li": 2, "O": 1}]))
    # Li2O removed: the hull at x_O = 1/3 runs Li -> Li2O2 (1/2, -1.4): -1.4 * (1/3) / (1/2)
    assert energy[0] == pytest.approx(-1.4 * 2 / 3)


def test_an_enumeration_row_gets_what_predict_gets_even_beside_an_element_outside_the_reference(
    paper_reference,
):
    assessor = StabilityAssessor(load_reference(paper_reference))
    rows = [{"Li": 2, "O": 1}, {"Li": 1, "O": 1}, {"Li": 1, "Na": 1}, {"O": 1}]
    per_row = assessor.hull_energies(rows)
    matrix = assessor.hull_energy_matrix(
        ["Li", "O", "Na"], np.array([[2, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0]])
    )
    assert np.array_equal(np.isnan(per_row), np.isnan(matrix)) and np.isnan(matrix[2])
    assert matrix[~np.isnan(matrix)] == pytest.approx(per_row[~np.isnan(per_row)])
    assert matrix[:2] == pytest.approx([-1.4 * 2 / 3, -1.5])  # Li2O: against the others


def test_a_system_past_the_element_limit_gets_a_reason_not_a_hull(paper_reference):
    reference = load_reference(paper_reference)
    assessor = StabilityAssessor(reference)
    many = {element: 1 for element in ("Li", "O", "Na", "K", "Mg", "Ca", "Fe", "Co", "Ni", "Cu", "Zn", "S")}
    reason = assessor.why_not(frozenset(many))
    assert reason["code"] == "outside_hull_reference"  # checked first: these are not in Li-O
    wide = StabilityAssessor(load_reference_with(reference, many))
    started = time.perf_counter()
    (answer,) = wide.assess(["x"], [many], [source(-1.0)])
    assert answer.value is None and answer.error["code"] == "too_many_elements_for_hull"
    assert answer.error["limit"] == MAX_HULL_ELEMENTS and time.perf_counter() - started < 1.0
    assert np.isnan(wide.hull_energies([many])[0])


def load_reference_with(reference, elements: dict) -> object:
    """The reference plus one binary compound per extra element, so every element is covered."""
    rows = [f"{key},{energy}" for key, energy in zip(reference.keys, reference.energies, strict=True)]
    rows += [f"{element}O,-1.0" for element in elements if element not in {"Li", "O"}]
    path = Path(tempfile.mkdtemp()) / "wide.csv"
    path.write_text("formula,formation_energy\n" + "\n".join(rows) + "\n")
    return load_reference(path)


def test_a_formula_outside_the_references_elements_gets_no_value_and_says_why(paper_reference):
    assessor = StabilityAssessor(load_reference(paper_reference))
    (answer,) = assessor.assess(["NaCl"], [{"Na": 1, "Cl": 1}], [source(-2.0)])
    assert answer.value is None and answer.p_stable is None and answer.decomposition is None
    assert answer.error["code"] == "outside_hull_reference" and answer.error["elements"] == ["Cl", "Na"]
    (mixed,) = assessor.assess(["LiCl"], [{"Li": 1, "Cl": 1}], [source(-2.0)])
    assert mixed.value is None and "Cl" in mixed.error["message"] and "Li" not in mixed.error["elements"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("Li2O,-2.0\nLi2Xx,-1.0\n", "line 3 ('Li2Xx'): unknown_element"),
        ("Li2O,-2.0\nLiO2,nan\n", "line 3 ('LiO2'): formation_energy 'nan' is not a finite number"),
        ("Li2O,-2.0\nLiO2,\n", "line 3 ('LiO2'): formation_energy '' is not a number"),
        ("Li2O,-2.0\nLi4O2,-1.9\n", "line 3 ('Li4O2'): the same composition (Li2O) as line 2"),
        ("Li2O,-2.0\nLi,-0.5\n", "line 3 ('Li'): an element's formation energy must be 0"),
        ("", "no rows"),
    ],
)
def test_a_reference_with_a_bad_row_is_refused_naming_the_row(tmp_path, rows, expected):
    path = tmp_path / "bad.csv"
    path.write_text("formula,formation_energy\n" + rows)
    with pytest.raises(HullReferenceError) as refused:
        load_reference(path)
    assert expected in str(refused.value) and str(path) in str(refused.value)


def test_a_reference_without_the_columns_is_refused(tmp_path):
    path = tmp_path / "columns.csv"
    path.write_text("formula,energy\nLi2O,-2\n")
    with pytest.raises(HullReferenceError, match="no column formation_energy"):
        load_reference(path)


def test_a_gzipped_reference_reads_like_the_plain_one(tmp_path, paper_reference):
    packed = tmp_path / "li-o.csv.gz"
    packed.write_bytes(gzip.compress(paper_reference.read_bytes()))
    plain, gz = load_reference(paper_reference), load_reference(packed)
    assert plain.keys == gz.keys and np.array_equal(plain.energies, gz.energies)


@pytest.mark.slow
def test_hulls_of_the_shipped_reference_give_bartels_dft_decomposition_enthalpies():
    """Each CritExam test compound's DFT energy minus the hull of all other compounds (our code, the
    shipped reference) against the ΔHd that Bartel et al. published for it (CritExam__Ed)."""
    from training.stability import ED_MEMBER, critexam, decomposition_enthalpies

    reference = load_reference()
    ed_test = critexam(ED_MEMBER)["test"]
    sample = np.random.default_rng(0).choice(len(ed_test.keys), 60, replace=False)
    positions = [reference.keys.index(ed_test.keys[i]) for i in sample]
    ours = decomposition_enthalpies(reference, positions)
    published = ed_test.energies[sample]
    assert np.abs(ours - published).max() < 3e-3  # eV/atom: MP's own rounding of energies
    assert (np.sign(ours) == np.sign(published)).mean() == 1.0
    assert 0.2 < (published <= 0).mean() < 0.7  # the sample holds stable and unstable compounds
    # The service's answer for a known compound predicted at exactly its DFT energy is the same
    # ΔHd: what /predict calls reference_value, and its value when the model is right.
    keys = [reference.keys[p] for p in positions]
    exact = [source(float(reference.energies[p])) for p in positions]
    answers = StabilityAssessor(reference).assess(keys, [reference.amounts[p] for p in positions], exact)
    assert [a.value for a in answers] == pytest.approx(list(ours), abs=1e-9)
    assert [a.reference_value for a in answers] == pytest.approx(list(ours), abs=1e-9)


def test_hulls_built_from_the_points_on_them_equal_pymatgens_hull_of_every_compound():
    """build_hull takes its facets from scipy's qhull, not from PhaseDiagram: on 120 real systems
    of the shipped reference (2-5 elements), its hull energy at every compound of the system
    equals the hull of PhaseDiagram given every compound, and so do the stable phases."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    reference = load_reference()
    systems = sorted({frozenset(a) for a in reference.amounts if 2 <= len(a) <= 5}, key=sorted)
    chosen = np.random.default_rng(1).choice(len(systems), 120, replace=False)
    compared = 0
    for system in (systems[i] for i in chosen):
        order = sorted(system)
        positions = reference.within(order)
        entries = [PDEntry(Composition({e: 1}), 0.0) for e in order] + [
            PDEntry(
                Composition(reference.amounts[p]), reference.energies[p] * sum(reference.amounts[p].values())
            )
            for p in positions
        ]
        full = PhaseDiagram(entries)
        hull = build_hull(reference, system)
        fractions = hull.fractions([reference.amounts[p] for p in positions])
        ours = hull.energy(fractions)[0]
        theirs = [full.get_hull_energy_per_atom(Composition(reference.amounts[p])) for p in positions]
        assert ours == pytest.approx(theirs, abs=1e-9), order
        stable = {parse_formula(entry.composition.formula).canonical_key for entry in full.stable_entries}
        assert set(hull.vertex_names) == stable, order
        compared += len(positions)
    assert compared > 1000


def test_the_shipped_reference_matches_its_metadata():
    reference = load_reference()
    assert len(reference.keys) == 85_014 and reference.name == "mp-critexam-2020"
    assert reference.metadata["licence"] and reference.metadata["citations"]
    assert reference.energy_of("LiFePO4") is not None and reference.energy_of("Fe") == 0.0
    assert Path(str(reference.metadata["source"]).split(" ", 1)[0]).suffix == ".whl"


def test_the_predicted_hull_refuses_a_system_past_the_element_limit(paper_reference):
    """A 10-element screen's predicted hull once kept a core busy for over nine minutes."""
    from app.errors import DomainError
    from app.stability.predicted_hull import predicted_hull

    reference = load_reference(paper_reference)
    elements = ["Li", "O", "Na", "K", "Mg", "Ca", "Fe", "Co"][: MAX_HULL_ELEMENTS + 1]
    started = time.perf_counter()
    with pytest.raises(DomainError) as refused:
        predicted_hull(reference, elements, [])
    assert refused.value.code == "too_many_elements_for_hull" and time.perf_counter() - started < 1.0
    assert predicted_hull(reference, ["Li", "O"], [])["phases"]  # within the limit it answers


def test_the_phase_diagram_fallback_builds_the_same_hull_as_qhull(monkeypatch):
    """Where qhull cannot build a hull, PhaseDiagram does: both agree on real systems."""
    import app.stability.hull as hull_module

    reference = load_reference()
    points = np.random.default_rng(0).dirichlet(np.ones(4), 300)
    for system in (frozenset({"Li", "Fe", "O"}), frozenset({"Li", "Fe", "P", "O"})):
        direct = build_hull(reference, system)
        with monkeypatch.context() as patched:
            patched.setattr(hull_module, "lower_facets", lambda fractions, energies: None)
            fallback = build_hull(reference, system)
        rows = points[:, : len(system)] / points[:, : len(system)].sum(axis=1, keepdims=True)
        assert fallback.energy(rows)[0] == pytest.approx(direct.energy(rows)[0], abs=1e-9)
        assert sorted(fallback.vertex_names) == sorted(direct.vertex_names)
        assert sorted(fallback.vertex_positions) == sorted(direct.vertex_positions)


def test_a_known_stable_compound_is_not_ready_inline_until_its_leave_out_hull_is_built(paper_reference):
    """/predict assesses inline only when every hull is built: the hull without a known stable
    compound is one more (it was built on the event loop: 0.27 s for a 7-element compound)."""
    assessor = StabilityAssessor(load_reference(paper_reference))
    assessor.hull_energies([{"Li": 1, "O": 1}])  # builds Li-O's hull
    assert assessor.hull_ready([{"Li": 1, "O": 1}])  # not a vertex: that hull is enough
    assert not assessor.hull_ready([{"Li": 2, "O": 1}])  # Li2O: the hull without it is missing
    assessor.hull_energies([{"Li": 2, "O": 1}])
    assert assessor.hull_ready([{"Li": 2, "O": 1}, {"Li": 1, "O": 1}])
    assert assessor.hull_ready([{"Na": 1, "O": 1}])  # no hull to wait for: it gets its reason at once
