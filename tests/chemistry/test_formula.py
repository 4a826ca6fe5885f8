"""Strict formula parsing and canonical keys, on hand-written cases and real OQMD formulas."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pymatgen.core import Composition, Element

from app.chemistry.elements import EF_ELEMENT_SET
from app.chemistry.formula import (
    MAX_AMOUNT,
    MIN_AMOUNT,
    FormulaError,
    ParsedFormula,
    canonical_key,
    formula_from_amounts,
    parse_formula,
)

OQMD_TRAIN = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/train.csv"
SAMPLE_SIZE = 2500


@pytest.fixture(scope="module")
def oqmd_formulas() -> list[str]:
    """A fixed random sample of real OQMD training formulas from the packaged crabnet wheel."""
    from training.data import ensure_wheel  # downloads the wheel into the user cache once

    with zipfile.ZipFile(ensure_wheel()) as wheel:
        rows = list(csv.DictReader(io.StringIO(wheel.read(OQMD_TRAIN).decode())))
    return random.Random(20240601).sample([row["formula"] for row in rows], SAMPLE_SIZE)


def written(elements: list[str], amounts: list[float]) -> str:
    return "".join(f"{symbol}{amount!r}" for symbol, amount in zip(elements, amounts, strict=True))


# --- accepted ------------------------------------------------------------------------------------

GOOD = [
    ("Fe2O3", {"Fe": 2, "O": 3}, "Fe2O3"),
    ("O3Fe2", {"Fe": 2, "O": 3}, "Fe2O3"),
    ("Fe4O6", {"Fe": 4, "O": 6}, "Fe2O3"),
    ("Fe0.4O0.6", {"Fe": 0.4, "O": 0.6}, "Fe2O3"),
    ("  Fe2O3\t", {"Fe": 2, "O": 3}, "Fe2O3"),
    ("Fe2 O3", {"Fe": 2, "O": 3}, "Fe2O3"),
    ("Li1 Fe1 P1 O4", {"Li": 1, "Fe": 1, "P": 1, "O": 4}, "LiFePO4"),
    ("LiFePO4", {"Li": 1, "Fe": 1, "P": 1, "O": 4}, "LiFePO4"),
    ("Li0.5Fe0.5PO4", {"Li": 0.5, "Fe": 0.5, "P": 1, "O": 4}, "LiFeP2O8"),
    ("Fe2.5O3", {"Fe": 2.5, "O": 3}, "Fe5O6"),
    ("Fe.5O", {"Fe": 0.5, "O": 1}, "FeO2"),
    ("Ca3(PO4)2", {"Ca": 3, "P": 2, "O": 8}, "Ca3P2O8"),
    ("K4[Fe(CN)6]", {"K": 4, "Fe": 1, "C": 6, "N": 6}, "K4FeC6N6"),
    ("{[(Fe)2]3}4O", {"Fe": 24, "O": 1}, "Fe24O"),
    ("Mg(OH)2", {"Mg": 1, "O": 2, "H": 2}, "MgH2O2"),
    ("CuSO4·5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}, "CuH10SO9"),
    ("CuSO4•5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}, "CuH10SO9"),
    ("CuSO4∙5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}, "CuH10SO9"),
    ("CuSO4 * 5 H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}, "CuH10SO9"),
    ("CuSO4.5H2O", {"Cu": 1, "S": 1, "O": 9, "H": 10}, "CuH10SO9"),
    ("CuSO4.H2O", {"Cu": 1, "S": 1, "O": 5, "H": 2}, "CuH2SO5"),
    ("Li2SO4.10D2O", {"Li": 2, "S": 1, "O": 14, "H": 20}, "Li2H20SO14"),
    ("Na2CO3*10H2O", {"Na": 2, "C": 1, "O": 13, "H": 20}, "Na2H20CO13"),
    ("3CdSO4·8H2O", {"Cd": 3, "S": 3, "O": 20, "H": 16}, "Cd3H16S3O20"),
    ("CaSO4·0.5H2O", {"Ca": 1, "S": 1, "O": 4.5, "H": 1}, "Ca2H2S2O9"),
    ("BF3·NH3", {"B": 1, "F": 3, "N": 1, "H": 3}, "BH3NF3"),
    ("Y3N@C80", {"Y": 3, "N": 1, "C": 80}, "Y3C80N"),
    ("D2O", {"H": 2, "O": 1}, "H2O"),
    ("HTO", {"H": 2, "O": 1}, "H2O"),
    ("Fe₂O₃", {"Fe": 2, "O": 3}, "Fe2O3"),
    ("Fe2.5(H2O)", {"Fe": 2.5, "H": 2, "O": 1}, "Fe5H4O2"),  # decimal: '(' is not water
    ("Fe2.5H2O", {"Fe": 2, "H": 10, "O": 5}, "Fe2H10O5"),  # '.' + integer + water: a hydrate
    ("Fe0.5H2O", {"Fe": 0.5, "H": 2, "O": 1}, "FeH4O2"),  # ... unless the amount before it is 0
    ("Fe0.3333333O0.6666667", {"Fe": 0.3333333, "O": 0.6666667}, "FeO2"),
    ("Mo368O1032", {"Mo": 368, "O": 1032}, "Mo46O129"),
    ("Fe1000O1", {"Fe": 1000, "O": 1}, "FeO0.001"),
    ("O2", {"O": 2}, "O"),
    ("HeO", {"He": 1, "O": 1}, "OHe"),  # real element: accepted when no domain is given
]


@pytest.mark.parametrize(("text", "amounts", "key"), GOOD)
def test_accepts_what_chemists_write(text: str, amounts: dict[str, float], key: str) -> None:
    parsed = parse_formula(text)
    assert parsed.amount_dict == pytest.approx(amounts, rel=1e-12)
    assert parsed.canonical_key == key
    assert parsed.text == text.strip()
    assert list(parsed.elements) == sorted(parsed.elements, key=lambda s: Element(s).Z)
    total = sum(amounts.values())
    assert parsed.fractions == pytest.approx([amounts[s] / total for s in parsed.elements], rel=1e-12)


@pytest.mark.parametrize("text", [t for t, _, _ in GOOD if not set(t) & set("·•∙*@.₂ DT") and "He" not in t])
def test_agrees_with_pymatgen_where_pymatgen_reads_the_same(text: str) -> None:
    expected = Composition(text).get_el_amt_dict()
    assert parse_formula(text).amount_dict == pytest.approx(expected, rel=1e-12)


def test_the_key_reparses_to_itself() -> None:
    for text, _, key in GOOD:
        assert parse_formula(key).canonical_key == key, text


def test_keys_of_any_amounts_read_back_as_themselves() -> None:
    # Written relative to the largest, Si would be 0.00000001, refused when read back.
    assert parse_formula("Fe10000Si0.0001").canonical_key == "Fe10000Si0.0001"
    assert parse_formula("(Fe100)100Si0.0001").canonical_key == "Fe10000Si0.0001"
    rng = random.Random(0)
    for _ in range(2_000):
        elements = rng.sample(["Fe", "Si", "O", "Li", "Ni", "Mn", "P"], rng.randint(2, 5))
        amounts = {e: 10 ** rng.uniform(-4, 4) for e in elements}
        parsed = formula_from_amounts(amounts, EF_ELEMENT_SET)
        again = parse_formula(parsed.canonical_key)  # refused, if a written amount left the bounds
        assert again.canonical_key == parsed.canonical_key, amounts
        assert again.fractions == pytest.approx(parsed.fractions, rel=1e-5)


# --- refused -------------------------------------------------------------------------------------

BAD = [
    ("", "empty_formula", "empty"),
    (" \t\n", "empty_formula", "empty"),
    ("Fe" * 129, "formula_too_long", "258 characters long, the limit is 256"),
    ("Fe2O3&", "invalid_formula", "'&' at position 5"),
    ("fe2o3", "invalid_formula", "'f' at position 0.*capital"),
    ("Fe2O3)", "invalid_formula", r"'\)' at position 5 closes nothing"),
    ("(Fe2O3", "invalid_formula", r"'\(' at position 0 is never closed"),
    ("(Fe2]O3", "invalid_formula", r"'\]' at position 4 does not match '\(' at position 0"),
    ("()O", "invalid_formula", "empty brackets at position 0"),
    ("Fe2 3O", "invalid_formula", "number '3' at position 4"),
    ("Fe2.O3", "invalid_formula", "'.' at position 3 is neither a decimal point"),
    ("Fe2O3.H2O2", "invalid_formula", "'.' at position 5"),
    ("CaSO4.0.5H2O", "invalid_formula", "ambiguous '.' at position 7 right after the decimal '4.0'"),
    ("Fe2O3·", "invalid_formula", "nothing follows '·' at position 5"),
    ("·H2O", "invalid_formula", "expected an element at position 0, found '·'"),
    ("Fe2O3··H2O", "invalid_formula", "expected an element at position 6, found '·'"),
    ("5", "invalid_formula", "expected an element after '5' at position 0"),
    (
        "Fe2(SO4·H2O)3",
        "invalid_formula",
        "separator '·' at position 7 inside the bracket opened at position 3",
    ),
    ("Xx2O", "unknown_element", "unknown element 'Xx' at position 0"),
    ("Zz", "unknown_element", "unknown element 'Zz'"),
    ("FeEO", "unknown_element", "unknown element 'E' at position 2"),
    ("X2O", "dummy_element", "'X' at position 0 is a placeholder"),
    ("Vac0.1Fe0.9O", "dummy_element", "'Vac' at position 0 is a placeholder"),
    ("Fe2+", "unsupported_notation", r"'\+' at position 3: charges, oxidation states"),
    ("O2-", "unsupported_notation", "'-' at position 2: charges"),
    ("Fe^3O", "unsupported_notation", r"'\^' at position 2"),
    ("Fe³⁺", "unsupported_notation", "'³' at position 2"),
    ("Fe-O", "unsupported_notation", "chemical systems"),
    ("Fe(III)2O3", "unsupported_notation", r"\(III\) at position 2 reads as an oxidation state"),
    ("Cu(I)Cl", "unsupported_notation", r"\(I\) at position 2"),
    ("Fe0O", "invalid_amount", "amount '0' at position 2 for Fe is zero"),
    ("Fe0.0O", "invalid_amount", "amount '0.0' at position 2 for Fe is zero"),
    ("Fe-2O3", "invalid_amount", "negative amount '-2' at position 2"),
    ("Fe1e-30O", "invalid_amount", "'1e-30' at position 2 uses exponent notation"),
    ("Fe1e308O", "invalid_amount", "'1e308' at position 2 uses exponent notation"),
    ("Fe2E3O", "invalid_amount", "'2E3' at position 2 uses exponent notation"),
    ("Fe0.00001O", "invalid_amount", r"amount '0.00001' at position 2 for Fe is outside \[0.0001, 10000\]"),
    ("Fe99999O", "invalid_amount", "amount '99999' at position 2 for Fe is outside"),
    ("(FeO)0", "invalid_amount", "multiplier '0' at position 5 for the group opened at position 0 is zero"),
    ("0H2O·CuSO4", "invalid_amount", "coefficient '0' at position 0 is zero"),
    ("(Fe5000O)3", "invalid_amount", "total amount 15000 of Fe is above the maximum 10000"),
    ("  Fe0O", "invalid_amount", "at position 4"),  # positions count the text as given
    # two formulas run together (a CSV cell whose quote took in the next rows): was NaFe2ClO3
    ("Fe2O3\nNaCl", "invalid_formula", "line break at position 5: a formula is one line"),
    ("Fe2O3 \r\n NaCl", "invalid_formula", "line break at position 6"),
    ("Fe2O3\u2028NaCl", "invalid_formula", "line break at position 5"),
]


@pytest.mark.parametrize(("text", "code", "message"), BAD)
def test_refuses_with_a_code_and_the_offending_part(text: str, code: str, message: str) -> None:
    with pytest.raises(FormulaError, match=message) as caught:
        parse_formula(text)
    assert caught.value.code == code
    assert caught.value.to_dict()["code"] == code
    if "position" in caught.value.details:
        position, token = caught.value.details["position"], caught.value.details["token"]
        assert text[position : position + len(token)] == token


@pytest.mark.parametrize(
    ("text", "outside"),
    [("He", "He"), ("NeO", "Ne"), ("ArCl", "Ar"), ("PoO2", "Po"), ("RnF2", "Rn"), ("AmO2", "Am")],
)
def test_refuses_elements_outside_the_models_domain(text: str, outside: str) -> None:
    with pytest.raises(FormulaError, match=f"element {outside} outside the model's domain") as caught:
        parse_formula(text, EF_ELEMENT_SET)
    assert caught.value.code == "unsupported_element"
    assert caught.value.details["element"] == outside
    assert "86 elements, H to Pu except He, Ne, Ar, Po, At, Rn, Fr, Ra" in caught.value.message
    assert parse_formula(text).elements  # a real element: fine without a domain
    with pytest.raises(FormulaError, match=f"element {outside} outside"):
        parse_formula(text, sorted(EF_ELEMENT_SET))  # type: ignore[arg-type]  # any iterable works


def test_max_length_is_a_parameter() -> None:
    assert parse_formula("Fe2O3", max_length=5).canonical_key == "Fe2O3"
    with pytest.raises(FormulaError, match="limit is 4") as caught:
        parse_formula("Fe2O3", max_length=4)
    assert caught.value.details == {"length": 5, "limit": 4}


def test_pymatgen_alone_would_have_accepted_the_amounts_we_refuse() -> None:
    # Why the strict layer exists; if pymatgen starts refusing these, the layer can shrink.
    assert Composition("Fe0O").get_el_amt_dict() == {"O": 1.0}
    assert Composition("Fe1e-30O").get_el_amt_dict() == {"O": 1.0}
    assert Composition("CuSO4.5H2O")["O"] == pytest.approx(5.5)


# --- formula_from_amounts and canonical_key ------------------------------------------------------


def test_formula_from_amounts_matches_parse_formula() -> None:
    built = formula_from_amounts({"Li": 0.5, "Fe": 0.5, "P": 1, "O": 4}, EF_ELEMENT_SET)
    assert built.text == "Li0.5Fe0.5PO4"
    assert built == parse_formula("Li0.5Fe0.5PO4", EF_ELEMENT_SET)
    assert formula_from_amounts({"Fe": 2, "O": 3}, text="hematite").text == "hematite"
    assert formula_from_amounts({"D": 2, "O": 1}).amount_dict == {"H": 2, "O": 1}
    merged = formula_from_amounts({"H": 1, "D": 1, "O": 1})
    assert merged.amount_dict == {"H": 2, "O": 1}
    assert merged.canonical_key == "H2O"


@pytest.mark.parametrize(
    ("amounts", "code", "message"),
    [
        ({}, "empty_formula", "no elements"),
        ({"Fe": 0, "O": 1}, "invalid_amount", "amount 0.0 of Fe"),
        ({"Fe": -1, "O": 1}, "invalid_amount", "amount -1.0 of Fe"),
        ({"Fe": math.nan, "O": 1}, "invalid_amount", "amount nan of Fe"),
        ({"Fe": math.inf, "O": 1}, "invalid_amount", "amount inf of Fe"),
        ({"Fe": 1e-30, "O": 1}, "invalid_amount", "amount 1e-30 of Fe"),
        ({"Fe": "two", "O": 1}, "invalid_amount", "amount nan of Fe"),
        ({"Xx": 1}, "unknown_element", "unknown element 'Xx'"),
        ({"X": 1, "O": 1}, "dummy_element", "'X' is a placeholder"),
        ({"He": 1}, "unsupported_element", "element He outside the model's domain"),
    ],
)
def test_formula_from_amounts_refuses_like_parse_formula(amounts: dict, code: str, message: str) -> None:
    with pytest.raises(FormulaError, match=message) as caught:
        formula_from_amounts(amounts, EF_ELEMENT_SET)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("elements", "amounts", "key"),
    [
        (["Fe", "O"], [2, 3], "Fe2O3"),
        (["O", "Fe"], [0.6, 0.4], "Fe2O3"),
        (["O", "P", "Fe", "Li"], [4, 1, 1, 1], "LiFePO4"),
        (["Fe", "O"], [1000 / 1001, 1 / 1001], "FeO0.001"),  # same fractions as Fe1000O1
        (["Fe", "O"], [999, 1], "Fe999O"),  # 1000 atoms: still an integer formula
        (["Fe", "O"], [math.e, 1], "FeO0.367879"),
        (["Fe", "O"], [1, 0.5778793], "Fe443O256"),  # FeO0.577879, as written, reads as Fe443O256
        (["Fe", "Si"], [10000, 0.0001], "Fe10000Si0.0001"),  # FeSi0.00000001 would be refused
        (["Fe", "O"], [math.pi, 1], "Fe355O113"),  # pi = 355/113 within the 1e-6 tolerance
        (["Cl", "Na"], [1, 1], "NaCl"),
        (["D", "H", "O"], [1, 1, 1], "H2O"),
    ],
)
def test_canonical_key(elements: list[str], amounts: list[float], key: str) -> None:
    assert canonical_key(elements, amounts) == key
    assert canonical_key(elements[::-1], amounts[::-1]) == key


def test_canonical_key_orders_elements_like_pymatgen() -> None:
    for text in ["LiFePO4", "Ca3(PO4)2", "K4[Fe(CN)6]", "BaTiO3", "NaCl", "SiC", "Cs2Se3Sn"]:
        # reduced_formula itself would write Ca3(PO4)2; formula is "Ca3 P2 O8", ones included.
        pymatgen = Composition(text).reduced_composition.formula
        assert parse_formula(text).canonical_key == re.sub(r"(?<=[a-zA-Z])1\b", "", pymatgen).replace(" ", "")


def test_keys_are_stable_across_processes() -> None:
    # Database keys: no dependence on hash seeds, dict order or anything else per process.
    texts = [t for t, _, _ in GOOD] + ["Cu1In1La2Se5", "Li0.1Na0.2K0.3Rb0.4Cl"]
    script = (
        "import json, sys\nfrom app.chemistry.formula import parse_formula\n"
        "print(json.dumps([parse_formula(t).canonical_key for t in json.loads(sys.stdin.read())]))"
    )
    keys = [parse_formula(t).canonical_key for t in texts]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[2],
        )
        assert json.loads(out.stdout) == keys


def test_parsed_formula_is_a_hashable_value() -> None:
    first, second = parse_formula("Fe2O3"), formula_from_amounts({"Fe": 2, "O": 3})
    assert isinstance(first, ParsedFormula)
    assert first == second and hash(first) == hash(second)
    assert first.composition() == Composition("Fe2O3")
    with pytest.raises(AttributeError):
        first.text = "FeO"  # type: ignore[misc]


# --- real formulas -------------------------------------------------------------------------------


def test_every_sampled_oqmd_formula_parses_inside_the_ef_domain(oqmd_formulas: list[str]) -> None:
    for text in oqmd_formulas:
        parsed = parse_formula(text, EF_ELEMENT_SET)
        assert set(parsed.elements) <= EF_ELEMENT_SET, text
        assert parsed.amount_dict == pytest.approx(Composition(text).get_el_amt_dict(), rel=1e-12), text
        assert math.fsum(parsed.fractions) == pytest.approx(1.0, abs=1e-12), text
        # The key is pymatgen's gcd-reduced formula (without its special cases such as O2, Li2O2)
        # with the elements in Composition.formula's electronegativity order.
        reduced = Composition(text).reduced_composition.get_el_amt_dict()
        divisor = math.gcd(*(int(a) for a in reduced.values()))
        key_symbols = re.findall("[A-Z][a-z]*", parsed.canonical_key)
        assert parse_formula(parsed.canonical_key).amount_dict == {s: a / divisor for s, a in reduced.items()}
        assert [Element(s).X for s in key_symbols] == sorted(Element(s).X for s in key_symbols), text


def test_rewrites_of_real_formulas_share_the_key(oqmd_formulas: list[str]) -> None:
    shuffle = random.Random(7)
    for text in oqmd_formulas:
        parsed = parse_formula(text, EF_ELEMENT_SET)
        elements, amounts = list(parsed.elements), list(parsed.amounts)
        order = list(range(len(elements)))
        shuffle.shuffle(order)
        permuted = [elements[i] for i in order]
        scale = shuffle.choice([2.0, 3.0, 0.5, 0.25, 1 / 3, 0.1])
        rewrites = [
            written(permuted, [amounts[i] * scale for i in order]),  # permuted and scaled
            f"({written(permuted, [amounts[i] for i in order])}){shuffle.randint(2, 9)}",  # grouped
            " ".join(f"{s} {a:g}" for s, a in zip(elements, amounts, strict=True)),  # spaced: full parser
        ]
        for rewrite in rewrites:
            assert parse_formula(rewrite, EF_ELEMENT_SET).canonical_key == parsed.canonical_key, rewrite
        fractions = dict(zip(elements, parsed.fractions, strict=True))
        assert formula_from_amounts(fractions, EF_ELEMENT_SET).canonical_key == parsed.canonical_key
        assert parse_formula(parsed.canonical_key).canonical_key == parsed.canonical_key


def test_amount_bounds_leave_room_for_real_formulas(oqmd_formulas: list[str]) -> None:
    amounts = [a for text in oqmd_formulas for a in parse_formula(text).amounts]
    assert min(amounts) > MIN_AMOUNT and max(amounts) < MAX_AMOUNT


@pytest.mark.parametrize("padding", ["", "  ", "\t \n"])
@pytest.mark.parametrize(
    ("text", "token"), [("Fe2.O3", "."), ("Fe1e5O", "1e5"), ("Fe(III)", "(III)"), ("Fe&", "&")]
)
def test_error_positions_index_the_text_as_given(padding: str, text: str, token: str) -> None:
    with pytest.raises(FormulaError) as caught:
        parse_formula(padding + text)
    assert caught.value.details["token"] == token
    assert caught.value.details["position"] == len(padding) + text.index(token)
