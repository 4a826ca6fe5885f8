"""Formula parsing: pymatgen's Composition underneath, strict checks on top.

CONTRACT (other modules rely on this; implementation may change):
- ``parse_formula(text, allowed_elements=None, max_length=MAX_FORMULA_LENGTH) -> ParsedFormula``
  raises ``FormulaError`` (a DomainError, HTTP 422) with a specific ``code``.
- ``ParsedFormula`` is immutable and hashable; ``canonical_key`` is shared by every formula
  with the same fractional composition (Fe2O3, O3Fe2, Fe4O6, Fe0.4O0.6 share "Fe2O3").
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import DomainError

MAX_FORMULA_LENGTH = 256


class FormulaError(DomainError):
    """A formula the service refuses. ``code`` says why, ``message`` names the bad part."""


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
