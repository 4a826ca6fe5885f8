"""Checking a screen before it is queued: models, filters, size; everything a 4xx can say up front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.chemistry.formula import clip_formula
from app.errors import DomainError, PayloadTooLargeError
from app.inference.registry import ModelRegistry
from app.screening.compute import ScreenModels
from app.screening.sources import Source, source_for
from app.screening.spec import ScreenRequest
from app.stability.assess import SCREEN_NAMES, StabilityAssessor, models_to_run


@dataclass
class PreparedScreen:
    request: ScreenRequest  # with ``properties`` resolved, so a resumed job asks for the same ones
    models: ScreenModels
    source: Source
    formulas: list[str] | None  # the input rows of a formula screen, stored with the job

    @property
    def total(self) -> int:
        return self.source.total

    def stored_request(self) -> dict[str, Any]:
        """The request as the job row keeps it: formulas live in their own compressed column."""
        stored = self.request.model_dump(mode="json")
        if stored["formulas"] is not None:
            stored["formulas"] = []
        return stored


def prepare_screen(
    request: ScreenRequest,
    registry: ModelRegistry,
    *,
    max_compositions: int,
    max_formula_length: int,
    formulas: Sequence[str] | None = None,
    source: Source | None = None,
    stability: StabilityAssessor | None = None,
) -> PreparedScreen:
    """Resolve and check everything; ``formulas`` (an upload) or ``source`` (a file the CLI streams)
    replace the request's own formula list."""
    wanted = request.required_properties()
    models = ScreenModels.from_registry(registry, wanted, max_formula_length, stability)
    # Named properties are resolved above (required_properties adds sort_by and the filters);
    # with properties=None every served model is used, so only an unknown name is left to refuse.
    for name in [request.sort_by, *request.filters]:
        if name is not None and name not in models.properties:
            # raises unknown_property, listing what is served, e_above_hull and its columns included
            models_to_run([name], registry.by_property, stability is not None, SCREEN_NAMES)
    described = models.describe()
    for name, bounds in request.filters.items():
        if bounds.max_uncertainty is not None and not described[name]["uncertainty"]:
            raise DomainError(
                "no_uncertainty",
                f"the model for {name!r} is a single network without an uncertainty; drop max_uncertainty",
                property=name,
            )
    resolved = request.model_copy(update={"properties": models.properties})
    rows = formulas if formulas is not None else request.formulas
    if rows is not None:  # stored with the job and echoed in its rows: over the limit, clipped
        rows = [clip_formula(text, max_formula_length) for text in rows]
    if source is None:
        source = source_for(resolved, rows, models.elements)
    total = source.total
    if total > max_compositions:
        raise PayloadTooLargeError(
            "too_many_compositions",
            f"the screen has {total:,} compositions, the limit is {max_compositions:,} "
            "(IBRNET_SCREEN_MAX_COMPOSITIONS); lower max_atoms, drop sub-systems or split the input",
            count=total,
            limit=max_compositions,
        )
    if total == 0:
        raise DomainError("empty_screen", "the screen has no compositions; raise max_atoms or add formulas")
    return PreparedScreen(resolved, models, source, rows if request.chemsys is None else None)
