"""The enumeration fast path gives exactly what parsing each composition would."""

from __future__ import annotations

import numpy as np
import pytest

from app.chemistry.featurizers import FEATURE_SPECS, get_featurizer
from app.chemistry.formula import formula_from_amounts, parse_formula
from app.chemistry.ragged import RaggedBatch
from app.screening.enumerate import ChemicalSpace
from app.screening.stoichiometry import StoichiometryEncoder


@pytest.fixture(scope="module", params=[("Li-Fe-P-O-F", 7), ("H-C-N-O-Cl-Pt", 5), ("Cs-Pb-I-Br", 12)])
def space_rows(request: pytest.FixtureRequest) -> tuple[ChemicalSpace, np.ndarray, list]:
    chemsys, max_atoms = request.param
    space = ChemicalSpace.from_chemsys(chemsys, max_atoms)
    amounts = np.concatenate(list(space.iter_amounts()))
    parsed = [
        formula_from_amounts({s: n for s, n in zip(space.elements, row, strict=True) if n})
        for row in amounts.tolist()
    ]
    return space, amounts, parsed


def test_keys_are_the_canonical_keys(space_rows: tuple[ChemicalSpace, np.ndarray, list]) -> None:
    space, amounts, parsed = space_rows
    keys = StoichiometryEncoder(space.elements, space.max_atoms).keys(amounts)
    assert keys == [formula.canonical_key for formula in parsed]
    # and each key is a formula that parses back to itself
    assert all(parse_formula(key).canonical_key == key for key in keys[::17])


def test_ragged_batch_is_what_parsing_builds(space_rows: tuple[ChemicalSpace, np.ndarray, list]) -> None:
    space, amounts, parsed = space_rows
    fast = StoichiometryEncoder(space.elements, space.max_atoms).batch(amounts)
    slow = RaggedBatch.from_formulas(parsed)
    for name in ("counts", "starts", "rows", "fractions"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert fast.symbols == slow.symbols


@pytest.mark.parametrize("spec", FEATURE_SPECS)
def test_features_are_bit_identical_to_the_parsed_path(
    spec: str, space_rows: tuple[ChemicalSpace, np.ndarray, list]
) -> None:
    space, amounts, parsed = space_rows
    featurizer = get_featurizer(spec)
    fast = featurizer.transform_batch(StoichiometryEncoder(space.elements, space.max_atoms).batch(amounts))
    slow = featurizer.transform(parsed, dtype=np.float64)
    assert np.array_equal(fast, slow, equal_nan=True)
