"""Chemical-space enumeration: exact counts, no duplicates, streaming, resumable, strict input."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from app.chemistry.elements import EF_ELEMENT_SET
from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import FormulaError, formula_from_amounts, parse_formula
from app.screening.enumerate import ChemicalSpace, parse_chemsys, primitive_count

SPACES = [
    ("Li-Fe-P-O", 8, True),
    ("Li-Fe-P-O", 8, False),
    ("Na-Cl", 12, True),
    ("Fe", 5, True),
    ("O-Li-Mn-Co-Ni", 7, True),
    ("Ba-Ti-O", 1, False),  # fewer atoms than elements: nothing
]


def all_amounts(space: ChemicalSpace, chunk_size: int = 97) -> np.ndarray:
    chunks = list(space.iter_amounts(chunk_size=chunk_size))
    return np.concatenate(chunks) if chunks else np.zeros((0, len(space.elements)), dtype=np.int64)


def enumerated_keys(space: ChemicalSpace) -> list[str]:
    """Keys through the real constructor (formula_from_amounts), not the fast encoder."""
    return [
        formula_from_amounts({s: n for s, n in zip(space.elements, row, strict=True) if n}).canonical_key
        for row in all_amounts(space).tolist()
    ]


def brute_force_keys(elements: tuple[str, ...], max_atoms: int, subsystems: bool) -> set[str]:
    """Every integer vector with at most max_atoms atoms, parsed from text: its canonical keys."""
    keys = set()
    low = 0 if subsystems else 1
    for amounts in itertools.product(range(low, max_atoms + 1), repeat=len(elements)):
        if not 1 <= sum(amounts) <= max_atoms:
            continue
        text = "".join(f"{s}{n}" for s, n in zip(elements, amounts, strict=True) if n)
        keys.add(parse_formula(text).canonical_key)
    return keys


@pytest.mark.parametrize(("chemsys", "max_atoms", "subsystems"), SPACES)
def test_count_is_known_up_front_and_exact(chemsys: str, max_atoms: int, subsystems: bool) -> None:
    space = ChemicalSpace.from_chemsys(chemsys, max_atoms, subsystems)
    assert space.count() == len(all_amounts(space))
    assert space.count() == sum(block.count for block in space.iter_blocks())


@pytest.mark.parametrize(("chemsys", "max_atoms", "subsystems"), SPACES)
def test_each_fractional_composition_exactly_once_against_brute_force(
    chemsys: str, max_atoms: int, subsystems: bool
) -> None:
    space = ChemicalSpace.from_chemsys(chemsys, max_atoms, subsystems)
    keys = enumerated_keys(space)
    assert len(keys) == len(set(keys)), "a fractional composition was enumerated twice"
    assert set(keys) == brute_force_keys(space.elements, max_atoms, subsystems)


@pytest.mark.parametrize(("chemsys", "max_atoms", "subsystems"), SPACES[:5])
def test_rows_are_primitive_and_within_max_atoms(chemsys: str, max_atoms: int, subsystems: bool) -> None:
    amounts = all_amounts(ChemicalSpace.from_chemsys(chemsys, max_atoms, subsystems))
    assert (amounts.sum(axis=1) <= max_atoms).all()
    assert (np.gcd.reduce(amounts, axis=1) == 1).all()
    if not subsystems:
        assert (amounts > 0).all()


def test_element_order_in_the_chemsys_does_not_matter() -> None:
    one = ChemicalSpace.from_chemsys("Li-Fe-P-O", 6)
    other = ChemicalSpace.from_chemsys("O-P-Fe-Li", 6)
    assert one.elements == other.elements == ("Li", "O", "P", "Fe")
    assert np.array_equal(all_amounts(one), all_amounts(other))


@pytest.mark.parametrize("total", range(1, 14))
@pytest.mark.parametrize("parts", range(1, 5))
def test_closed_form_count_matches_brute_force(total: int, parts: int) -> None:
    brute = sum(
        1
        for amounts in itertools.product(range(1, total + 1), repeat=parts)
        if sum(amounts) == total and math.gcd(*amounts) == 1
    )
    assert primitive_count(total, parts) == brute


def test_any_row_range_equals_the_same_slice_of_the_full_stream() -> None:
    """What a resumed job (start = committed progress) and a Dask partition rely on."""
    space = ChemicalSpace.from_chemsys("Li-Mn-P-O", 9)
    full = all_amounts(space)
    block_edges = np.cumsum([block.count for block in space.iter_blocks()])
    starts = [0, 1, 5, 63, int(block_edges[3]), int(block_edges[3]) - 1, len(full) - 1, len(full)]
    for start in starts:
        for stop in (start, start + 1, start + 50, len(full)):
            got = list(space.iter_amounts(start, stop, chunk_size=7))
            rows = np.concatenate(got) if got else full[:0]
            assert np.array_equal(rows, full[start:stop]), (start, stop)
            assert all(len(chunk) <= 7 for chunk in got)


def test_enumeration_streams_a_space_too_large_to_hold() -> None:
    space = ChemicalSpace.from_chemsys("Li-Na-K-Mg-Ca-Fe-Co-Ni-Cu-Zn-O-S", 60)
    assert space.count() > 10**12  # would need terabytes if materialised
    stream = space.iter_amounts(start=space.count() // 2, chunk_size=1000)
    assert isinstance(stream, Iterator)
    tracemalloc.start()
    try:
        chunks = [next(stream) for _ in range(3)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 1000]
    assert peak < 20 * 2**20  # a few chunks' worth, not the space


@pytest.mark.parametrize(
    ("chemsys", "code", "element"),
    [
        ("Li-Xx-O", "unknown_element", "Xx"),
        ("li-O", "unknown_element", "li"),
        ("Li-He", "unsupported_element", "He"),  # a real element, outside the EF models' domain
        ("Li-Fe-Po", "unsupported_element", "Po"),
        ("Li-O-Li", "duplicate_element", "Li"),
        ("Li--O", "invalid_chemsys", None),
        ("  ", "invalid_chemsys", None),
        ("Li,Fe,O", "unknown_element", "Li,Fe,O"),
    ],
)
def test_bad_chemical_systems_are_refused_naming_the_part(
    chemsys: str, code: str, element: str | None
) -> None:
    with pytest.raises(FormulaError) as raised:
        parse_chemsys(chemsys, EF_ELEMENT_SET)
    assert raised.value.code == code
    assert raised.value.details.get("element") == element
    if element:
        assert repr(element) in raised.value.message


@pytest.mark.parametrize("max_atoms", [0, -3, 1001])
def test_max_atoms_out_of_range_is_refused(max_atoms: int) -> None:
    with pytest.raises(FormulaError) as raised:
        ChemicalSpace.from_chemsys("Li-O", max_atoms)
    assert raised.value.code == "invalid_max_atoms"


def test_resuming_inside_a_large_block_skips_by_counting_and_agrees_with_the_full_stream() -> None:
    # Blocks of this space hold up to ~100,000 compositions: starting inside one descends by
    # counted sub-trees instead of generating and dropping rows, and must land on the same rows.
    space = ChemicalSpace.from_chemsys("Li-Fe-P-O-F-S", 30, include_subsystems=False)
    assert max(block.count for block in space.iter_blocks()) > 65_536
    full = all_amounts(space, chunk_size=8192)
    rng = np.random.default_rng(0)
    for start in [*rng.integers(0, len(full), 12).tolist(), len(full) - 3]:
        rows = np.concatenate(list(space.iter_amounts(start, start + 300, chunk_size=128)))
        assert np.array_equal(rows, full[start : start + 300]), start


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("max_atoms", [1, 2, 6, 12, 30, 97])
def test_the_closed_form_count_equals_the_sum_of_its_totals(size, max_atoms):
    space = ChemicalSpace(("H", "Li", "Be", "B", "C", "N", "O")[:size], max_atoms)
    by_total = sum(primitive_count(total, size) for total in range(size, max_atoms + 1))
    assert space.subset_count(size) == by_total


def test_a_huge_enumeration_is_counted_without_walking_its_totals(monkeypatch):
    """86 elements up to 1000 atoms: the count a 413 reports took 1.7 s of CPU when it summed
    primitive_count over every (size, total); the closed form never calls it (issue 17, defect 7)."""
    elements = tuple(get_featurizer("ef").labels)
    expected_digits = 130  # ~1e129 compositions

    def walked(*_args: object) -> int:
        raise AssertionError("count() walked the totals")

    monkeypatch.setattr("app.screening.enumerate.primitive_count", walked)
    assert len(str(ChemicalSpace(elements, 1000).count())) == expected_digits
