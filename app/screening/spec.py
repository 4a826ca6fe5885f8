"""What a screen is: its input (an enumeration or formulas), properties, filters and ranking.

One validated value shared by the HTTP API, the in-service runner and the CLI, and stored as
JSON with each job so a resumed job reads exactly the request it was given.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas import FormulaList, PropertyName
from app.screening.enumerate import MAX_ATOMS_LIMIT


class PropertyFilter(BaseModel):
    """Keep a row only if this property's prediction lies in [min, max] (and is certain enough)."""

    # NaN or infinite bounds are refused: NaN would silently drop every row, and the stored
    # request (JSON) cannot hold either.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min: float | None = None
    max: float | None = None
    max_uncertainty: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _a_range_that_can_hold_a_value(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: no value could pass")
        return self


# Columns whose best rows are the highest, so a ranking by them starts there unless told otherwise:
# "the 100 most likely stable" is what sort_by p_stable with top_k 100 means to a user.
HIGHEST_FIRST = frozenset({"p_stable"})


class ScreenRequest(BaseModel):
    """``{"chemsys", "max_atoms", "include_subsystems", ...}`` or ``{"formulas": [...], ...}``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    chemsys: str | None = Field(None, max_length=512, examples=["Li-Fe-O"])
    max_atoms: int = Field(6, ge=1, le=MAX_ATOMS_LIMIT, description="atoms in the reduced formula")
    include_subsystems: bool = True
    formulas: FormulaList | None = Field(None, examples=[["Fe2O3", "LiFePO4"]])
    properties: list[PropertyName] | None = Field(
        None, min_length=1, description="default: every served property"
    )
    sort_by: PropertyName | None = None
    ascending: bool | None = Field(
        None, description="default: highest first for p_stable (most likely stable), lowest first otherwise"
    )
    top_k: int | None = Field(None, ge=1, le=1_000_000)
    filters: dict[PropertyName, PropertyFilter] = Field(default_factory=dict)
    # Applies to every property whose model reports an uncertainty (ensembles); point models
    # have none, so it does not touch them.
    max_uncertainty: float | None = Field(None, ge=0)
    in_domain_only: bool = Field(
        False, description="keep only rows inside every screened model's training domain (in_domain)"
    )

    @field_validator("max_atoms", mode="before")
    @classmethod
    def _a_number_of_atoms(cls, value: object) -> object:
        # true or "5" is a mistake in the request, not 1 or 5 atoms (6.0 from a notebook is 6).
        if isinstance(value, bool | str):
            raise ValueError(f"max_atoms must be a JSON integer, not {type(value).__name__} {value!r}")
        return value

    @model_validator(mode="after")
    def _one_input_and_a_ranking(self) -> Self:
        if (self.chemsys is None) == (self.formulas is None):
            raise ValueError("give exactly one input: 'chemsys' (an enumeration) or 'formulas'")
        if self.top_k is not None and self.sort_by is None:
            raise ValueError("'top_k' needs 'sort_by': the best rows by which property?")
        if self.ascending is None:
            self.ascending = self.sort_by not in HIGHEST_FIRST
        return self

    def required_properties(self) -> list[str] | None:
        """The requested properties plus those that sorting and filtering need, in order."""
        if self.properties is None:
            return None
        extra = [self.sort_by] if self.sort_by else []
        return list(dict.fromkeys([*self.properties, *extra, *self.filters]))
