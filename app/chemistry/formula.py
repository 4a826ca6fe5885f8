"""Formula parsing: pymatgen's element table underneath, a strict grammar on top.

CONTRACT (other modules rely on this; implementation may change):
- ``parse_formula(text, allowed_elements=None, max_length=MAX_FORMULA_LENGTH) -> ParsedFormula``
  raises ``FormulaError`` (a DomainError, HTTP 422) with a specific ``code``.
- ``formula_from_amounts(amounts, allowed_elements=None, text=None) -> ParsedFormula``: the fast
  path for code that already holds {symbol: amount} (chemical-space enumeration).
- ``canonical_key(elements, amounts) -> str``.
- ``ParsedFormula`` is immutable and hashable; ``canonical_key`` is shared by every formula
  with the same fractional composition (Fe2O3, O3Fe2, Fe4O6, Fe0.4O0.6 share "Fe2O3").

Why our own grammar: pymatgen's ``Composition`` parser is a lenient regex that silently drops
zero and tiny amounts (``Fe0O`` and ``Fe1e-30O`` become ``O``), accepts ``Fe1e308O``, reads
``Fe(III)2O3`` as iodine, ``CuSO4.5H2O`` as O5.5 H2, and cannot say *where* a formula is wrong.
So the text is tokenized here, every rejection names the offending token and its position, and
pymatgen supplies what it is the authority on: the element symbols, atomic numbers and
electronegativities (the key's element order is ``Composition.formula``'s). For every formula
both read the same way the amounts agree with ``Composition`` (tests check this on real data).

Accepted syntax:
- element symbols with optional amounts: integers or decimals (``Li0.5Fe0.5PO4``, ``Fe.5O``);
  no signs, no exponent notation; whitespace anywhere between tokens (``Li1 Fe1 P1 O4``).
- groups in ``()``, ``[]`` or ``{}``, nested, each closed by its own kind, with an optional
  multiplier: ``Ca3(PO4)2``, ``K4[Fe(CN)6]``.
- hydrates and adducts at the top level, joined by ``·`` (U+00B7), ``•``, ``∙``, ``⋅`` or ``*``,
  each part with an optional leading coefficient: ``CuSO4·5H2O`` = Cu S O9 H10,
  ``Na2CO3*10H2O``, ``3CdSO4·8H2O``, ``CaSO4·0.5H2O``. ``@`` (``Y3N@C80``) joins parts too,
  as in pymatgen.
- ``.`` is a hydrate separator only when an optional integer coefficient and water (H2O, D2O,
  T2O) follow (``CuSO4.5H2O``, ``CuSO4.H2O``, ``Li2SO4.10D2O``); every other ``.`` is a decimal
  point (``Fe2.5O3`` stays Fe2.5 O3). So ``Fe2.5H2O`` reads as Fe2 · 5 H2O; for the decimal
  meaning write ``Fe2.5(H2O)`` or ``H2OFe2.5``. Two exceptions, where the hydrate reading is
  impossible: after a part's coefficient (``CaSO4·2.5H2O``) and after an amount of 0
  (``Fe0.5H2O``), the ``.`` is decimal. A decimal number followed by another ``.``
  (``CaSO4.0.5H2O``) is refused as ambiguous.
- deuterium ``D`` and tritium ``T`` count as hydrogen; subscript digits (``Fe₂O₃``) as digits.

Refused: charges and oxidation states (``Fe2+``, ``O2-``, ``Fe^3+``, ``Fe(III)``, ``Cu(I)Cl``),
which the models have no input for and pymatgen would mangle (``Fe(III)`` is Fe I3 to it), with
code ``unsupported_notation``. A "-" right after an element or group and before digits is a
negative amount (``invalid_amount``).

Keys: see ``canonical_key``. Pure elements key as the bare symbol ("O" for O2): unlike pymatgen's
``reduced_formula`` there are no special cases (O2, H2O2, Li2O2) and no regrouping (Ca3(PO4)2).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pymatgen.core.periodic_table import Element

from app.errors import DomainError
from app.memo import BytesBoundedMemo

MAX_FORMULA_LENGTH = 256

# Bounds on every amount, written or computed. Real formulas stay well inside them: dopant
# levels below 1e-4 are below what a composition model resolves (and far more often a typo or a
# unit error), and the largest real formula units (polyoxometalate clusters such as
# Mo368O1032) stay below 1e4. Together they keep every element fraction above 1e-8, which
# float32 features still represent, and reject float blow-ups such as 1e308.
MIN_AMOUNT = 1e-4
MAX_AMOUNT = 1e4

# Canonical keys are integer formulas when the reduced formula unit has at most this many atoms
# (i.e. the fractions times a common multiplier <= 1000 are integers within the tolerance below);
# otherwise the key lists the amounts relative to the largest, with KEY_SIGNIFICANT_DIGITS digits.
MAX_KEY_ATOMS = 1000
# Relative tolerance for "this fraction times the multiplier is an integer". Loose enough to absorb
# decimals typed with 7+ digits (Fe0.3333333O0.6666667 -> FeO2), tight enough that distinct
# formula units up to MAX_KEY_ATOMS atoms (fractions >= 1e-6 apart) never merge.
KEY_RELATIVE_TOLERANCE = 1e-6
KEY_SIGNIFICANT_DIGITS = 6

# Placeholder symbols that are not atoms: pymatgen's dummy species "X" and vacancies ("Va" in
# CALPHAD, "Vac" in pymatgen/ASE). Any other unknown symbol is reported as unknown_element.
DUMMY_SYMBOLS = frozenset({"X", "Va", "Vac"})
ISOTOPES = {"D": "H", "T": "H"}  # deuterium and tritium are hydrogen to every model


class FormulaError(DomainError):
    """A formula the service refuses. ``code`` says why, ``message`` names the bad part."""


class NotAString(str):
    """A batch item that was not a JSON string (1, null, ["x"]), carried as its JSON text so that it
    is refused alone, by parse_formula, instead of failing the whole batch's validation."""

    kind: str  # "a number", "null", "an array", ...

    @classmethod
    def of(cls, value: object) -> NotAString:
        return cls.of_kind(_json_text(value)[:NOT_A_STRING_SHOWN], _json_kind(value))

    @classmethod
    def of_kind(cls, shown: str, kind: str) -> NotAString:
        text = cls(shown)
        text.kind = kind
        return text


class LongFormula(str):
    """A formula over the length limit, kept as its first characters and "…" (what is echoed and
    stored) with its real length: it is refused as formula_too_long naming that length, and a
    25 MB formula is neither echoed back whole nor stored in a screen (see clip_formula)."""

    length: int

    @classmethod
    def of_length(cls, shown: str, length: int) -> LongFormula:
        text = cls(shown)
        text.length = length
        return text


def clip_formula(text: str, max_length: int, length: int | None = None) -> str:
    """``text``, or a LongFormula of its first ``max_length`` characters where it is longer.
    ``length`` is the stripped length when the caller knows it (``text`` may then be cut already)."""
    if isinstance(text, NotAString | LongFormula):
        return text
    if length is None:
        if len(text) <= max_length:
            return text
        length = len(text.strip())
    return text if length <= max_length else LongFormula.of_length(text[:max_length] + "…", length)


NOT_A_STRING_SHOWN = 100  # characters of a non-string item's JSON text echoed back


def _json_text(value: object) -> str:
    # A body may hold a million such items, so this costs about a microsecond for a scalar, and an
    # array or object is written lazily, only as far as the echo shows (not the 30 MiB behind it).
    if value is None or isinstance(value, bool):
        return _JSON_CONSTANTS[value]
    if isinstance(value, int):
        try:
            return str(value)  # an int's text is its JSON (json.dumps takes 5x longer)
        except ValueError:  # more than 4300 digits
            return "(a number too long to show)"
    if not isinstance(value, list | tuple | dict):
        return json.dumps(value)  # a float (NaN and Infinity as json writes them)
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    pieces, length = [], 0
    for piece in _LAZY_ENCODER.iterencode(value):
        pieces.append(piece)
        length += len(piece)
        if length >= NOT_A_STRING_SHOWN:
            break
    return "".join(pieces)


_LAZY_ENCODER = json.JSONEncoder(default=str)
_JSON_CONSTANTS = {None: "null", True: "true", False: "false"}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list | tuple) else "an object"


@dataclass(frozen=True, slots=True)
class ParsedFormula:
    text: str  # what the user wrote, stripped
    elements: tuple[str, ...]  # symbols, sorted by atomic number (D/T folded into H)
    amounts: tuple[float, ...]  # amounts as written (hydrates merged), same order as elements
    fractions: tuple[float, ...]  # amounts / sum(amounts), same order
    canonical_key: str  # see module docstring

    @property
    def amount_dict(self) -> dict[str, float]:
        return dict(zip(self.elements, self.amounts, strict=True))

    def composition(self) -> Any:  # pymatgen.core.Composition (imported lazily: it is heavy)
        from pymatgen.core import Composition

        return Composition(self.amount_dict)


# ---------------------------------------------------------------------------------------------
# Element tables (from pymatgen, built once)


def _element_tables() -> tuple[dict[str, int], dict[str, int]]:
    atomic_number = {element.symbol: element.Z for element in Element}
    with warnings.catch_warnings():
        # pymatgen warns for elements without a Pauling electronegativity (noble gases, Z > 103).
        warnings.simplefilter("ignore")
        electronegativity = {element.symbol: element.X for element in Element}
    # Composition.formula sorts by electronegativity alone (stable sort: ties keep input order,
    # NaN breaks the sort); the symbol as tiebreak and NaN last make the order a pure function.
    no_value = math.inf
    ordered = sorted(
        atomic_number,
        key=lambda s: (no_value if math.isnan(electronegativity[s]) else electronegativity[s], s),
    )
    return atomic_number, {symbol: rank for rank, symbol in enumerate(ordered)}


ATOMIC_NUMBER, _KEY_RANK = _element_tables()


# ---------------------------------------------------------------------------------------------
# Canonical key


def canonical_key(elements: Sequence[str], amounts: Sequence[float]) -> str:
    """Key shared by every formula with the same fractional composition (see module docstring).

    Elements in ``Composition.formula`` order (electronegativity, then symbol); amounts are the
    smallest integers proportional to the fractions when the reduced formula unit has at most
    MAX_KEY_ATOMS atoms (an amount of 1 is omitted: "LiFePO4"), else the amounts
    relative to the largest with KEY_SIGNIFICANT_DIGITS significant digits ("FeO0.001" for Fe1000O;
    see ``_written``). Every key reads back as itself.
    """
    merged: dict[str, float] = {}
    for symbol, amount in zip(elements, amounts, strict=True):
        if not (amount > 0 and math.isfinite(amount)):
            raise FormulaError(
                "invalid_amount", f"amount {amount!r} of {symbol} is not positive", element=symbol
            )
        element = _check_symbol(symbol)
        merged[element] = merged.get(element, 0.0) + float(amount)
    total = math.fsum(merged.values())
    return _key(tuple(merged), tuple(merged.values()), tuple(a / total for a in merged.values()))


def _key(elements: tuple[str, ...], amounts: tuple[float, ...], fractions: tuple[float, ...]) -> str:
    order = sorted(range(len(elements)), key=lambda i: _KEY_RANK[elements[i]])
    integers = _integer_amounts(amounts, fractions)
    written: tuple[str, ...] = ()
    if integers is None:
        written = tuple("" if text == "1" else text for text in _written(amounts))
        # A key must read back as itself, and rounding can put the written amounts within the
        # integer tolerance (FeO0.5778793 is written FeO0.577879, which reads as Fe443O256):
        # then the key is that integer formula.
        values = tuple(float(text or "1") for text in written)
        total = math.fsum(values)
        integers = _integer_amounts(values, tuple(value / total for value in values))
    if integers is not None:
        written = tuple("" if n == 1 else str(n) for n in integers)
    return "".join(f"{elements[i]}{written[i]}" for i in order)


def _written(amounts: tuple[float, ...]) -> tuple[str, ...]:
    """The amounts of a key that is not an integer formula: relative to the largest, which is 1
    and not written ("FeO0.367879"), with KEY_SIGNIFICANT_DIGITS digits. If that puts one below
    MIN_AMOUNT, which would be refused when read back, the smallest is MIN_AMOUNT instead (the
    largest then stays within MAX_AMOUNT, since every amount is bounded): "Fe10000Si0.0001".
    Either way the writing reads back as itself (the anchor is written exactly)."""
    scale = 1.0 / max(amounts)
    smallest = min(amounts)
    if smallest * scale < MIN_AMOUNT:
        scale = MIN_AMOUNT / smallest
    return tuple(_significant(amount * scale) for amount in amounts)


def _integer_amounts(amounts: tuple[float, ...], fractions: tuple[float, ...]) -> tuple[int, ...] | None:
    if all(a.is_integer() for a in amounts):
        # Common case (database formulas): exact integers, so the reduced formula is a gcd away.
        # Larger formula units go the general way, as their rescaled (fractional) writings do.
        integers = [int(a) for a in amounts]
        divisor = math.gcd(*integers)
        if sum(integers) // divisor <= MAX_KEY_ATOMS:
            return tuple(n // divisor for n in integers)
    # Each fraction's smallest denominator q <= MAX_KEY_ATOMS with fraction * q an integer within
    # the tolerance; the common multiplier is their lcm. Exact for k/m fractions with
    # m <= MAX_KEY_ATOMS, so the result agrees with the integer path above for every rescaling.
    multiplier = 1
    for fraction in fractions:
        denominator = _denominator(fraction)
        if denominator is None:
            return None
        multiplier = math.lcm(multiplier, denominator)
        if multiplier > MAX_KEY_ATOMS:
            return None
    integers = [round(f * multiplier) for f in fractions]
    divisor = math.gcd(*integers)
    return tuple(n // divisor for n in integers)


def _denominator(fraction: float) -> int | None:
    """Smallest q <= MAX_KEY_ATOMS among the continued-fraction convergents p/q of ``fraction``
    (0 < fraction <= 1) with |fraction * q - p| <= KEY_RELATIVE_TOLERANCE * fraction * q."""
    # Convergents are the best rational approximations; five to ten steps reach any q <= 1000.
    # Floats suffice: the closeness test uses ``fraction`` itself, never the running remainder.
    p_previous, p = 0, 1
    q_previous, q = 1, 0
    remainder = fraction
    while True:
        whole = math.floor(remainder)
        p_previous, p = p, whole * p + p_previous
        q_previous, q = q, whole * q + q_previous
        if q > MAX_KEY_ATOMS:
            return None
        scaled = fraction * q
        if p > 0 and abs(scaled - p) <= KEY_RELATIVE_TOLERANCE * scaled:
            return q
        remainder -= whole
        if remainder == 0:
            return None
        remainder = 1 / remainder


def _significant(value: float) -> str:
    """``value`` (> 0) positional, KEY_SIGNIFICANT_DIGITS significant digits, trimmed."""
    decimals = KEY_SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(value))
    return f"{value:.{max(decimals, 0)}f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------
# Building a ParsedFormula from validated amounts


def _build(text: str, amounts: Mapping[str, float]) -> ParsedFormula:
    elements = tuple(sorted(amounts, key=ATOMIC_NUMBER.__getitem__))
    values = tuple(amounts[symbol] for symbol in elements)
    total = math.fsum(values)  # correctly rounded: the fractions do not depend on input order
    fractions = tuple(a / total for a in values)
    return ParsedFormula(text, elements, values, fractions, _key(elements, values, fractions))


def _check_symbol(symbol: str, **where: Any) -> str:
    """The element ``symbol`` stands for, or FormulaError (dummy_element / unknown_element)."""
    if symbol in ATOMIC_NUMBER:
        return symbol
    if symbol in ISOTOPES:
        return ISOTOPES[symbol]
    at = f" at position {where['position']}" if "position" in where else ""
    if symbol in DUMMY_SYMBOLS:
        raise FormulaError(
            "dummy_element",
            f"{symbol!r}{at} is a placeholder (dummy species or vacancy), not a chemical element",
            element=symbol,
            **where,
        )
    raise FormulaError("unknown_element", f"unknown element {symbol!r}{at}", element=symbol, **where)


def _check_final_amounts(amounts: Mapping[str, float]) -> None:
    for symbol, amount in amounts.items():
        if not MIN_AMOUNT <= amount <= MAX_AMOUNT:
            low = amount < MIN_AMOUNT
            side, limit = ("below the minimum", MIN_AMOUNT) if low else ("above the maximum", MAX_AMOUNT)
            raise FormulaError(
                "invalid_amount",
                f"total amount {amount:g} of {symbol} is {side} {limit:g}",
                element=symbol,
                amount=amount,
                limit=limit,
            )


def _check_allowed(parsed: ParsedFormula, allowed_elements: frozenset[str] | None) -> ParsedFormula:
    if allowed_elements is None:
        return parsed
    if not isinstance(allowed_elements, frozenset):  # any iterable of symbols works
        allowed_elements = frozenset(allowed_elements)
    if allowed_elements.issuperset(parsed.elements):
        return parsed
    outside = [symbol for symbol in parsed.elements if symbol not in allowed_elements]
    names = ", ".join(outside)
    raise FormulaError(
        "unsupported_element",
        f"{'element' if len(outside) == 1 else 'elements'} {names} outside the model's domain: "
        f"{describe_elements(allowed_elements)}",
        element=outside[0],
        elements=outside,
    )


@lru_cache(maxsize=64)
def describe_elements(elements: frozenset[str]) -> str:
    """'it accepts 86 elements, H to Pu except He, Ne, ...' (short even for large sets)."""
    ordered = sorted((s for s in elements if s in ATOMIC_NUMBER), key=ATOMIC_NUMBER.__getitem__)
    if not ordered:
        return "it accepts no elements"
    first, last = ATOMIC_NUMBER[ordered[0]], ATOMIC_NUMBER[ordered[-1]]
    by_number = {z: s for s, z in ATOMIC_NUMBER.items()}
    missing = [by_number[z] for z in range(first, last + 1) if by_number[z] not in elements]
    span = f"{ordered[0]} to {ordered[-1]}"
    if not missing:
        return f"it accepts {len(ordered)} elements, {span}"
    if len(missing) <= 12:
        return f"it accepts {len(ordered)} elements, {span} except {', '.join(missing)}"
    return f"it accepts {len(ordered)} elements: {', '.join(ordered)}"


# ---------------------------------------------------------------------------------------------
# Public API


def parse_formula(
    text: str,
    allowed_elements: frozenset[str] | None = None,
    max_length: int = MAX_FORMULA_LENGTH,
) -> ParsedFormula:
    """Parse ``text`` strictly (syntax in the module docstring) or raise FormulaError.

    ``allowed_elements`` is the model's domain (e.g. EF_ELEMENT_SET); None accepts every real
    element. Codes: empty_formula, formula_too_long, invalid_formula, unsupported_notation,
    unknown_element, dummy_element, invalid_amount, unsupported_element. Error positions count
    characters of ``text`` as given, from 0.
    """
    if isinstance(text, NotAString):
        raise FormulaError("invalid_formula", f"a formula must be a JSON string, not {text.kind} ({text})")
    if not isinstance(text, str):
        raise FormulaError("invalid_formula", f"a formula must be a string, not {type(text).__name__}")
    length = text.length if isinstance(text, LongFormula) else len(text.strip())
    if length == 0:
        raise FormulaError("empty_formula", "formula is empty")
    # A LongFormula is refused even under a limit raised since: only its first characters are left.
    if length > max_length or isinstance(text, LongFormula):
        over = f"the limit is {max_length}" if length > max_length else "over the limit when it was submitted"
        raise FormulaError(
            "formula_too_long",
            f"formula is {length} characters long, {over}",
            length=length,
            limit=max_length,
        )
    return _check_allowed(_parse_cached(text), allowed_elements)


def formula_from_amounts(
    amounts: Mapping[str, float],
    allowed_elements: frozenset[str] | None = None,
    text: str | None = None,
) -> ParsedFormula:
    """ParsedFormula from {symbol: amount}, with the same checks as parse_formula.

    ``text`` defaults to a formula written from ``amounts`` in their order ("Li0.5Fe0.5PO4"),
    which parse_formula reads back to the same ParsedFormula.
    """
    if not amounts:
        raise FormulaError("empty_formula", "formula has no elements")
    merged: dict[str, float] = {}
    for symbol, amount in amounts.items():
        element = symbol if symbol in ATOMIC_NUMBER else _check_symbol(symbol)
        try:
            value = float(amount)
        except (TypeError, ValueError):
            value = math.nan
        if not MIN_AMOUNT <= value <= MAX_AMOUNT:  # also False for NaN
            raise FormulaError(
                "invalid_amount",
                f"amount {value!r} of {symbol} is not a number in [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}]",
                element=symbol,
                amount=value,
            )
        if element in merged:  # D or T next to H
            merged[element] += value
            _check_final_amounts(merged)
        else:
            merged[element] = value
    if text is None:
        text = "".join(symbol if a == 1 else f"{symbol}{_plain(a)}" for symbol, a in amounts.items())
    return _check_allowed(_build(text, merged), allowed_elements)


def _plain(value: float) -> str:
    """Shortest text that reads back as ``value`` (repr, without a trailing '.0')."""
    written = repr(float(value))
    return written[:-2] if written.endswith(".0") else written


# ---------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "el", "num", "open", "close", "sep"
    text: str
    position: int


_SCAN_RE = re.compile(
    r"(?P<ws>\s+)|(?P<el>[A-Z][a-z]*)|(?P<num>\d+)|(?P<open>[(\[{])|(?P<close>[)\]}])|(?P<sep>[·•∙⋅*@])"
)
# "." + optional integer coefficient + water, not followed by more of a formula (H2O2, H2Os).
_HYDRATE_DOT_RE = re.compile(r"\.\s*(?:\d+\s*)?[HDT]2O(?![a-z\d])")
_DECIMAL_TAIL_RE = re.compile(r"\.\d+")
_EXPONENT_RE = re.compile(r"[eE][+-]?\d+")
_CHARGE_CHARS = frozenset("+-−^⁺⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_PART_STARTS = frozenset("·•∙⋅*@.")  # characters after which a number is a part's coefficient
_CLOSER = {"(": ")", "[": "]", "{": "}"}
_ROMAN_NUMERALS = frozenset({"I", "II", "III", "IV", "V", "VI", "VII", "VIII"})


def _tokenize(text: str) -> list[_Token]:
    scan_text = text if text.isascii() else text.translate(_SUBSCRIPTS)  # 1:1, positions hold
    tokens: list[_Token] = []
    position, end = 0, len(scan_text)
    while position < end:
        match = _SCAN_RE.match(scan_text, position)
        if match is None:
            tokens.append(_odd_token(scan_text, position))
            position += len(tokens[-1].text)
            continue
        kind = match.lastgroup
        if kind == "num":
            stop = _number_end(scan_text, position, match.end())
            tokens.append(_Token("num", scan_text[position:stop], position))
            position = stop
            continue
        if kind != "ws":
            tokens.append(_Token(kind or "", match.group(), position))
        elif tokens and match.end() < end:
            _refuse_line_break(scan_text, position, match.end())
        position = match.end()
    return tokens


# Spaces may separate tokens ("Li Fe P O4"); a line break may not. It means two formulas run
# together: a CSV cell whose unclosed quote took in the rows after it ("Fe2O3\nNaCl" was read
# as NaFe2ClO3), or two lines pasted into one field.
_LINE_BREAK_RE = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def _refuse_line_break(text: str, start: int, stop: int) -> None:
    found = _LINE_BREAK_RE.search(text, start, stop)
    if found is not None:
        raise FormulaError(
            "invalid_formula",
            f"line break at position {found.start()}: a formula is one line (two formulas run together?)",
            token=found.group(),
            position=found.start(),
        )


def _number_end(text: str, start: int, stop: int) -> int:
    """End of the number whose digits span [start, stop): decimal part, refusing exponents."""
    if stop < len(text) and text[stop] == "." and not _starts_hydrate(text, start, stop):
        tail = _DECIMAL_TAIL_RE.match(text, stop)
        if tail is None:
            raise FormulaError(
                "invalid_formula",
                f"'.' at position {stop} is neither a decimal point (Fe2.5O3) "
                "nor a hydrate separator (CuSO4.5H2O)",
                token=".",
                position=stop,
            )
        stop = tail.end()
        if stop < len(text) and text[stop] == ".":
            raise FormulaError(
                "invalid_formula",
                f"ambiguous '.' at position {stop} right after the decimal {text[start:stop]!r}: "
                "write hydrates with '·' (CaSO4·0.5H2O)",
                token=".",
                position=stop,
            )
    exponent = _EXPONENT_RE.match(text, stop)
    if exponent is not None:
        written = text[start : exponent.end()]
        raise FormulaError(
            "invalid_amount",
            f"amount {written!r} at position {start} uses exponent notation; write it as a plain number",
            token=written,
            position=start,
        )
    return stop


def _starts_hydrate(text: str, start: int, dot: int) -> bool:
    """Whether the "." at ``dot``, right after the number at ``start``, separates a hydrate."""
    # A number that leads a part ("0.5" in CaSO4·0.5H2O) is a coefficient: its "." is decimal.
    before = text[:start].rstrip()
    leads_part = not before or before[-1] in _PART_STARTS
    if leads_part or text[start:dot].strip("0") == "":  # "Fe0.5H2O": an amount 0 is no reading
        return False
    return _HYDRATE_DOT_RE.match(text, dot) is not None


def _odd_token(text: str, position: int) -> _Token:
    """A character the scanner does not take: a '.' that starts something, or an error."""
    char = text[position]
    if char == ".":
        if _HYDRATE_DOT_RE.match(text, position):
            return _Token("sep", ".", position)
        tail = _DECIMAL_TAIL_RE.match(text, position)
        if tail is not None:  # ".5" as in Fe.5O
            return _Token("num", tail.group(), position)
        raise FormulaError(
            "invalid_formula",
            f"'.' at position {position} is neither a decimal point (Fe2.5O3) "
            "nor a hydrate separator (CuSO4.5H2O)",
            token=".",
            position=position,
        )
    if char in "-−" and position + 1 < len(text) and text[position + 1].isdigit():
        number = re.match(r"[-−]\d*\.?\d*", text[position:])
        written = number.group() if number else char
        if position > 0 and (text[position - 1].isalpha() or text[position - 1] in ")]}"):
            raise FormulaError(
                "invalid_amount",
                f"negative amount {written!r} at position {position}",
                token=written,
                position=position,
            )
    if char in _CHARGE_CHARS:
        raise FormulaError(
            "unsupported_notation",
            f"{char!r} at position {position}: charges, oxidation states (Fe2+, O2-) and chemical "
            "systems (Fe-O) are not supported; write the neutral formula, e.g. Fe2O3",
            token=char,
            position=position,
        )
    if char.islower():
        raise FormulaError(
            "invalid_formula",
            f"unexpected {char!r} at position {position}: element symbols start with a capital letter",
            token=char,
            position=position,
        )
    raise FormulaError(
        "invalid_formula", f"unexpected {char!r} at position {position}", token=char, position=position
    )


# ---------------------------------------------------------------------------------------------
# Parser: formula := part (SEP part)* ; part := [coefficient] sequence ;
# sequence := (element [amount] | OPEN sequence CLOSE [multiplier])+


def _parse_text(text: str) -> ParsedFormula:
    stripped = text.strip()
    totals = _parse_plain(stripped)
    if totals is None:  # the full parser reads the text as given, so positions index into it
        totals = _Parser(text, _tokenize(text)).parse()
    _check_final_amounts(totals)
    return _build(stripped, totals)


# Valid formulas only (a refusal raises, and exceptions are not kept), bounded in bytes of text.
_parse_cached = BytesBoundedMemo(_parse_text, 16 * 1024 * 1024, lambda text: text)


# Most real formulas are plain element-amount runs ("Ta2Te1Zr1", "Li0.5Fe0.5PO4"): read those with
# one regex and hand everything else, including anything this path would refuse, to the full
# parser, which then names the error. Tests check that both paths agree on real data.
_PLAIN_RE = re.compile(r"(?:[A-Z][a-z]?(?:\d+(?:\.\d+)?)?)+")
_PLAIN_PAIR_RE = re.compile(r"([A-Z][a-z]?)(\d+(?:\.\d+)?)?")


def _parse_plain(text: str) -> dict[str, float] | None:
    if _PLAIN_RE.fullmatch(text) is None or ("." in text and _HYDRATE_DOT_RE.search(text)):
        return None
    totals: dict[str, float] = {}
    for symbol, number in _PLAIN_PAIR_RE.findall(text):
        amount = float(number) if number else 1.0
        if symbol not in ATOMIC_NUMBER or not MIN_AMOUNT <= amount <= MAX_AMOUNT:
            return None
        totals[symbol] = totals.get(symbol, 0.0) + amount
    return totals


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text  # as given: token positions index into it
        self.tokens = tokens
        self.index = 0

    def parse(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        while True:
            start = self._peek()
            coefficient = self._number("coefficient") if start is not None and start.kind == "num" else 1.0
            part = self._sequence(None)
            if not part:
                raise self._expected_element(start)
            for symbol, amount in part.items():
                totals[symbol] = totals.get(symbol, 0.0) + amount * coefficient
            separator = self._peek()
            if separator is None:
                return totals
            self.index += 1  # _sequence stops at the end or at a separator only
            if self._peek() is None:
                raise FormulaError(
                    "invalid_formula",
                    f"nothing follows {separator.text!r} at position {separator.position}",
                    token=separator.text,
                    position=separator.position,
                )

    def _expected_element(self, start: _Token | None) -> FormulaError:
        found = self._peek()
        if found is not None:
            where, token = f"at position {found.position}, found {found.text!r}", found
        else:  # the text ended right after a coefficient ("5")
            assert start is not None  # parse_formula never tokenizes an empty text
            where, token = f"after {start.text!r} at position {start.position}", start
        return FormulaError(
            "invalid_formula", f"expected an element {where}", token=token.text, position=token.position
        )

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _number(self, role: str, owner: str = "") -> float:
        token = self.tokens[self.index]
        self.index += 1
        value = float(token.text)
        if value == 0 or not MIN_AMOUNT <= value <= MAX_AMOUNT:
            problem = "zero" if value == 0 else f"outside [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}]"
            raise FormulaError(
                "invalid_amount",
                f"{role} {token.text!r} at position {token.position}{owner} is {problem}",
                token=token.text,
                position=token.position,
            )
        return value

    def _sequence(self, opener: _Token | None) -> dict[str, float]:
        amounts: dict[str, float] = {}
        while (token := self._peek()) is not None:
            if token.kind == "el":
                self.index += 1
                symbol = _check_symbol(token.text, token=token.text, position=token.position)
                following = self._peek()
                amount = 1.0
                if following is not None and following.kind == "num":
                    amount = self._number("amount", f" for {token.text}")
                amounts[symbol] = amounts.get(symbol, 0.0) + amount
            elif token.kind == "open":
                self.index += 1
                first = self.index
                inner = self._sequence(token)
                self._refuse_roman_numeral(self.tokens[first - 1 : self.index])
                following = self._peek()
                multiplier = 1.0
                if following is not None and following.kind == "num":
                    multiplier = self._number(
                        "multiplier", f" for the group opened at position {token.position}"
                    )
                for symbol, amount in inner.items():
                    amounts[symbol] = amounts.get(symbol, 0.0) + amount * multiplier
            elif token.kind == "close":
                return self._close(opener, token, amounts)
            elif token.kind == "sep":
                if opener is not None:
                    raise FormulaError(
                        "invalid_formula",
                        f"separator {token.text!r} at position {token.position} inside the bracket "
                        f"opened at position {opener.position}",
                        token=token.text,
                        position=token.position,
                    )
                return amounts
            else:  # a number where an element or bracket must stand
                raise FormulaError(
                    "invalid_formula",
                    f"number {token.text!r} at position {token.position} follows neither an element "
                    "nor a closing bracket",
                    token=token.text,
                    position=token.position,
                )
        if opener is not None:
            raise FormulaError(
                "invalid_formula",
                f"{opener.text!r} at position {opener.position} is never closed",
                token=opener.text,
                position=opener.position,
            )
        return amounts

    def _close(self, opener: _Token | None, token: _Token, amounts: dict[str, float]) -> dict[str, float]:
        if opener is None:
            raise FormulaError(
                "invalid_formula",
                f"{token.text!r} at position {token.position} closes nothing",
                token=token.text,
                position=token.position,
            )
        if _CLOSER[opener.text] != token.text:
            raise FormulaError(
                "invalid_formula",
                f"{token.text!r} at position {token.position} does not match {opener.text!r} "
                f"at position {opener.position}",
                token=token.text,
                position=token.position,
            )
        if not amounts:
            raise FormulaError(
                "invalid_formula",
                f"empty brackets at position {opener.position}",
                token=opener.text + token.text,
                position=opener.position,
            )
        self.index += 1
        return amounts

    def _refuse_roman_numeral(self, group: list[_Token]) -> None:
        """``group`` runs from the opening to the closing bracket: Fe(III) is not iron-iodine."""
        inside = group[1:-1]
        numeral = "".join(t.text for t in inside)
        if numeral in _ROMAN_NUMERALS and all(t.kind == "el" for t in inside):
            written = self.text[group[0].position : group[-1].position + 1]
            raise FormulaError(
                "unsupported_notation",
                f"{written} at position {group[0].position} reads as an oxidation state, which is not "
                "supported; write the neutral formula (Fe2O3, not Fe(III)2O3)",
                token=written,
                position=group[0].position,
            )
