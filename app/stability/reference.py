"""The hull reference: DFT formation energies (eV/atom) of known compounds, read and checked once.

A CSV with columns ``formula,formation_energy`` (gzip allowed). Every row is checked at start-up
and a bad file is refused with the row that is wrong (unparseable formula, missing or non-finite
energy, the same composition twice, an element whose energy is not 0), never half-loaded:
a hull built on a silently skipped row would answer wrongly for a whole chemical system.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from app.chemistry.formula import FormulaError, parse_formula

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_REFERENCE = DATA_DIR / "mp_critexam_formation_energy.csv.gz"
SHIPPED_METADATA = DATA_DIR / "mp_critexam_formation_energy.json"
REQUIRED_COLUMNS = ("formula", "formation_energy")
_ELEMENT_KEY = re.compile(r"[A-Z][a-z]*")  # a canonical key of one element is its bare symbol
# An element's formation energy is 0 by definition; a few meV of rounding in an export is tolerated.
ELEMENT_TOLERANCE = 1e-3
# Reference formulas are trusted data, not requests: long hydrates and defect cells are allowed.
MAX_REFERENCE_FORMULA_LENGTH = 10_000


class HullReferenceError(ValueError):
    """The reference file cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class HullReference:
    name: str
    sha256: str  # of the file's bytes, as served in every answer's `reference`
    keys: list[str]  # canonical composition key per compound
    amounts: list[dict[str, float]]  # element -> amount per compound
    energies: np.ndarray  # float64 eV/atom per compound
    metadata: dict[str, object] = field(default_factory=dict)  # source, licence, citation
    _by_elements: dict[frozenset[str], list[int]] = field(default_factory=dict, repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for position, amounts in enumerate(self.amounts):
            self._by_elements.setdefault(frozenset(amounts), []).append(position)
        self._index.update({key: position for position, key in enumerate(self.keys)})

    @property
    def elements(self) -> frozenset[str]:
        return frozenset().union(*self._by_elements) if self._by_elements else frozenset()

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256[:12]}

    def energy_of(self, key: str) -> float | None:
        """The reference's own energy for a composition it holds (known compounds), else None.
        Elements are always known: every hull has them at 0."""
        position = self._index.get(key)
        if position is None:
            return 0.0 if _ELEMENT_KEY.fullmatch(key) else None
        return float(self.energies[position])

    def within(self, elements: Iterable[str]) -> list[int]:
        """Compounds made only of ``elements`` (every sub-system included)."""
        pool = sorted(set(elements))
        found: list[int] = []
        for size in range(1, len(pool) + 1):
            for subset in combinations(pool, size):
                found.extend(self._by_elements.get(frozenset(subset), ()))
        return found


def load_reference(path: Path | None = None) -> HullReference:
    """The shipped Materials Project reference, or the CSV at ``path``; HullReferenceError if bad."""
    path = Path(path) if path is not None else SHIPPED_REFERENCE
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise HullReferenceError(f"hull reference {path}: cannot read it ({error.strerror})") from None
    metadata: dict[str, object] = {}
    if path == SHIPPED_REFERENCE:
        metadata = json.loads(SHIPPED_METADATA.read_text(encoding="utf-8"))
        if metadata.get("sha256") != hashlib.sha256(raw).hexdigest():
            raise HullReferenceError(
                f"hull reference {path}: its sha256 differs from {SHIPPED_METADATA.name}; "
                "rebuild both with scripts/build_hull_reference.py"
            )
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise HullReferenceError(f"hull reference {path}: not UTF-8 text ({error})") from None
    keys, amounts, energies = parse_rows(csv.DictReader(io.StringIO(decoded)), str(path))
    return HullReference(
        name=str(metadata.get("name", path.name)),
        sha256=hashlib.sha256(raw).hexdigest(),
        keys=keys,
        amounts=amounts,
        energies=np.asarray(energies, dtype=np.float64),
        metadata=metadata,
    )


def parse_rows(reader: csv.DictReader, origin: str) -> tuple[list[str], list[dict[str, float]], list[float]]:
    missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise HullReferenceError(
            f"hull reference {origin}: no column {', '.join(missing)} (the header must have "
            f"{','.join(REQUIRED_COLUMNS)}; found {','.join(reader.fieldnames or []) or 'nothing'})"
        )
    keys: list[str] = []
    amounts: list[dict[str, float]] = []
    energies: list[float] = []
    first_row: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        formula = (row.get("formula") or "").strip()
        where = f"hull reference {origin}, line {line} ({formula!r})"
        try:
            parsed = parse_formula(formula, max_length=MAX_REFERENCE_FORMULA_LENGTH)
        except FormulaError as error:
            raise HullReferenceError(f"{where}: {error.code}: {error.message}") from None
        energy = _energy(row.get("formation_energy"), where)
        if parsed.canonical_key in first_row:
            raise HullReferenceError(
                f"{where}: the same composition ({parsed.canonical_key}) as line "
                f"{first_row[parsed.canonical_key]}; keep one energy per composition (the lowest)"
            )
        if len(parsed.amount_dict) == 1 and abs(energy) > ELEMENT_TOLERANCE:
            raise HullReferenceError(f"{where}: an element's formation energy must be 0, not {energy}")
        first_row[parsed.canonical_key] = line
        keys.append(parsed.canonical_key)
        amounts.append(dict(parsed.amount_dict))
        energies.append(energy)
    if not keys:
        raise HullReferenceError(f"hull reference {origin}: no rows")
    return keys, amounts, energies


def _energy(text: str | None, where: str) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise HullReferenceError(f"{where}: formation_energy {text!r} is not a number") from None
    if not math.isfinite(value):
        raise HullReferenceError(f"{where}: formation_energy {text!r} is not a finite number")
    return value
