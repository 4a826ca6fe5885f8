"""Featurizers: EF layout, PA against matminer (the reference) on real formulas, batch invariance."""

from __future__ import annotations

import csv
import importlib.util
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital
from pymatgen.core import Composition

from app.chemistry.elements import EF_ELEMENT_SET, EF_ELEMENTS
from app.chemistry.featurizers import FEATURE_SPECS, get_featurizer
from app.chemistry.formula import ParsedFormula, parse_formula
from app.chemistry.physical_attributes import TABLE_PATH, PhysicalAttributeFeaturizer
from training.data import ensure_wheel

REPO = Path(__file__).resolve().parents[2]
OQMD = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/test.csv"
EXPT_GAP = "crabnet/data/matbench/expt_gap.csv"  # fractional amounts, parentheses
AFLOW = "crabnet/data/benchmark_data/aflow__Egap/train.csv"  # the only source of unaries
# Rounding noise: matminer weighs by amounts (sum(a*x)/sum(a)), we by fractions, so a statistic
# whose exact value is 0 (avg_dev of equal values) comes out as ~1e-16 x the property's scale
# (at most ~4e3, MeltingT) on one side and 0 on the other. Nothing real is that small.
ATOL = 1e-9


def _read_formulas(wheel: zipfile.ZipFile, member: str) -> list[str]:
    with wheel.open(member) as handle:
        return [row["formula"] for row in csv.DictReader(io.TextIOWrapper(handle, "utf-8"))]


def _spread(items: list[str], n: int) -> list[str]:
    return [items[i] for i in np.linspace(0, len(items) - 1, n).astype(int)]


@pytest.fixture(scope="module")
def formulas() -> list[ParsedFormula]:
    """~2,100 real formulas: a deterministic spread of OQMD, every OQMD test formula with 5 to 7
    elements, real fractional/parenthesised formulas and every AFLOW unary."""
    with zipfile.ZipFile(ensure_wheel()) as wheel:
        oqmd = _read_formulas(wheel, OQMD)
        many = [f for f in oqmd if sum(c.isupper() for c in f) >= 5]  # OQMD writes each element once
        unary = [f for f in _read_formulas(wheel, AFLOW) if sum(c.isupper() for c in f) == 1]
        texts = _spread(oqmd, 1500) + many + _spread(_read_formulas(wheel, EXPT_GAP), 300) + unary
    parsed = [parse_formula(t) for t in dict.fromkeys(texts)]
    # AFLOW has unaries of He, Ne, Ar, which PA refuses (see test_elements_cover_every_ef_element).
    return [p for p in parsed if get_featurizer("pa").elements.issuperset(p.elements)]


@pytest.fixture(scope="module")
def matminer_pa(formulas: list[ParsedFormula]) -> tuple[list[str], np.ndarray]:
    featurizers = [
        Stoichiometry(),
        ElementProperty.from_preset("magpie"),
        ValenceOrbital(props=["frac"]),
        IonProperty(fast=True),
    ]
    labels = [label for f in featurizers for label in f.feature_labels()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's and matminer's deprecation chatter
        rows = [[float(v) for f in featurizers for v in f.featurize(Composition(p.text))] for p in formulas]
    return labels, np.array(rows)


def test_sample_covers_the_hard_cases(formulas, matminer_pa):
    """Guards the parity test against a sample that would make it trivially pass."""
    sizes = np.array([len(p.elements) for p in formulas])
    assert len(formulas) >= 2000
    assert (sizes == 1).sum() >= 30 and (sizes >= 5).sum() >= 200 and sizes.max() >= 7
    assert any(a != int(a) for p in formulas for a in p.amounts)
    labels, reference = matminer_pa
    compound_possible = reference[:, labels.index("compound possible")]
    assert 0.2 < compound_possible.mean() < 0.8
    # Mode ties (several elements share the largest fraction) with different values.
    ties = [p for p in formulas if p.fractions.count(max(p.fractions)) > 1]
    assert len(ties) > 500


def test_pa_labels_are_matminers(matminer_pa):
    labels, _ = matminer_pa
    assert get_featurizer("pa").labels == tuple(labels)
    assert len(labels) == 145


def test_pa_matches_matminer(formulas, matminer_pa):
    _, reference = matminer_pa
    ours = get_featurizer("pa").transform(formulas, dtype=np.float64)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=ATOL)


def test_pruned_charge_search_agrees_with_enumeration(formulas):
    """The per-formula fallback for formulas with too many oxidation-state combinations gives the
    same answers as the vectorised enumeration (forced here on every formula)."""
    enumerated = get_featurizer("pa").transform(formulas, dtype=np.float64)
    searched = PhysicalAttributeFeaturizer(max_enumerated_combinations=1).transform(
        formulas, dtype=np.float64
    )
    np.testing.assert_array_equal(searched, enumerated)
    # And on formulas beyond the enumeration limit (C, Cl, I, Br, S, Se, N: 9*5*5*4*4*4*3 = 43,200
    # combinations), where only some amounts allow a neutral assignment.
    pa = get_featurizer("pa")
    assert pa.max_enumerated_combinations < 43_200
    column = pa.labels.index("compound possible")
    big = [parse_formula(t) for t in ("CClIBrSSeN", "C0.001Cl1.001IBrSSeN", "Cl0.5I1.25BrSSeNC0.3")]
    possible = pa.transform(big, dtype=np.float64)[:, column]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [IonProperty(fast=True).featurize(Composition(p.text))[0] for p in big]
    assert possible.tolist() == [float(e) for e in expected] == [1.0, 1.0, 0.0]


def test_widths_and_labels():
    ef, pa, both = (get_featurizer(spec) for spec in FEATURE_SPECS)
    assert (ef.width, pa.width, both.width) == (86, 145, 231)
    assert ef.labels == EF_ELEMENTS
    assert both.labels == ef.labels + pa.labels
    assert len(set(both.labels)) == 231


def test_elements_cover_every_ef_element():
    pa = get_featurizer("pa")
    assert pa.elements >= EF_ELEMENT_SET
    # matminer imputes missing data with a mean for these; we refuse rather than invent values.
    assert {"He", "Ne", "Ar", "At", "Rn", "Fr"}.isdisjoint(pa.elements)
    assert get_featurizer("ef+pa").elements == EF_ELEMENT_SET


def test_ef_puts_each_fraction_in_its_column(formulas):
    ef = get_featurizer("ef")
    ours = ef.transform(formulas, dtype=np.float64)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    expected = np.zeros_like(ours)
    for row, p in enumerate(formulas):
        for symbol, fraction in zip(p.elements, p.fractions, strict=True):
            expected[row, EF_ELEMENTS.index(symbol)] = fraction
    np.testing.assert_array_equal(ours, expected)


def test_ef_plus_pa_is_ef_then_pa(formulas):
    both = get_featurizer("ef+pa").transform(formulas, dtype=np.float64)
    ef = get_featurizer("ef").transform(formulas, dtype=np.float64)
    pa = get_featurizer("pa").transform(formulas, dtype=np.float64)
    np.testing.assert_array_equal(both, np.hstack([ef, pa]))


@pytest.mark.parametrize("spec", FEATURE_SPECS)
def test_batch_equals_row_by_row(spec, formulas):
    featurizer = get_featurizer(spec)
    sample = formulas[::10]
    batch = featurizer.transform(sample, dtype=np.float64)
    one_by_one = np.vstack([featurizer.transform([p], dtype=np.float64) for p in sample])
    np.testing.assert_array_equal(batch, one_by_one)
    default = featurizer.transform(sample)
    assert default.dtype == np.float32 and default.shape == (len(sample), featurizer.width)
    np.testing.assert_array_equal(default, batch.astype(np.float32))


@pytest.mark.parametrize("spec", FEATURE_SPECS)
def test_same_fractional_composition_same_vector(spec):
    texts = ("Fe2O3", "O3Fe2", "Fe4O6", "Fe0.4O0.6")
    vectors = get_featurizer(spec).transform([parse_formula(t) for t in texts], dtype=np.float64)
    np.testing.assert_allclose(vectors, np.broadcast_to(vectors[0], vectors.shape), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("spec", FEATURE_SPECS)
def test_empty_batch(spec):
    featurizer = get_featurizer(spec)
    assert featurizer.transform([]).shape == (0, featurizer.width)


def test_unsupported_element_is_named():
    helium_oxide = ParsedFormula("HeO", ("He", "O"), (1.0, 1.0), (0.5, 0.5), "HeO")
    for spec in FEATURE_SPECS:
        with pytest.raises(ValueError, match=r"\['He'\]"):
            get_featurizer(spec).transform([parse_formula("Fe2O3"), helium_oxide])


def test_unknown_spec():
    with pytest.raises(ValueError, match="unknown feature set 'magpie'"):
        get_featurizer("magpie")


def test_element_table_is_what_matminer_ships():
    """The committed table equals a fresh extraction from the installed matminer and pymatgen."""
    spec = importlib.util.spec_from_file_location("build_tables", REPO / "scripts/build_element_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = [line for line in TABLE_PATH.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    committed = [line.split(",") for line in lines[1:]]
    assert committed == module.build_rows()
