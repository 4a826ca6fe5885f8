"""Where a screen's rows come from: an enumerated chemical space or a list of formulas.

A source knows its size up front and yields predicted chunks for any row range, which is all a
resumed job (start at the committed progress) or a Dask partition (a row range) needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from app.chemistry.formula import MAX_FORMULA_LENGTH
from app.screening.compute import ChunkResult, ScreenModels
from app.screening.enumerate import ChemicalSpace
from app.screening.io import Format, count_formulas, format_of, iter_formulas
from app.screening.spec import ScreenRequest
from app.screening.stoichiometry import StoichiometryEncoder


@dataclass
class EnumerationSource:
    space: ChemicalSpace
    encoder: StoichiometryEncoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.encoder = StoichiometryEncoder(self.space.elements, self.space.max_atoms)

    @property
    def total(self) -> int:
        return self.space.count()

    def results(
        self, models: ScreenModels, start: int = 0, stop: int | None = None, chunk_size: int = 4096
    ) -> Iterator[ChunkResult]:
        row = start
        for amounts in self.space.iter_amounts(start, stop, chunk_size):
            yield models.predict_amounts(self.encoder, amounts, row)
            row += len(amounts)


@dataclass
class FormulaSource:
    formulas: Sequence[str]
    first_row: int = 0  # row index of formulas[0] (a Dask partition is a slice of a bigger input)

    @property
    def total(self) -> int:
        return len(self.formulas)

    def results(
        self, models: ScreenModels, start: int = 0, stop: int | None = None, chunk_size: int = 4096
    ) -> Iterator[ChunkResult]:
        """Rows ``start:stop`` of this list (positions in the list, not global row indices)."""
        stop = self.total if stop is None else min(stop, self.total)
        for first in range(start, stop, chunk_size):
            texts = self.formulas[first : min(first + chunk_size, stop)]
            yield models.predict_formulas(texts, self.first_row + first)


@dataclass
class FileSource:
    """A CSV or Parquet file's formula column, read a batch at a time (the CLI's input)."""

    path: Path
    column: str = "formula"
    # a longer formula is read as its first characters (clip_formula), as the service stores one
    max_formula_length: int = MAX_FORMULA_LENGTH
    file_format: Format = field(init=False)

    def __post_init__(self) -> None:
        self.file_format = format_of(str(self.path))

    @cached_property
    def total(self) -> int:
        return count_formulas(self.path, self.column, self.file_format)

    def batches(self, size: int) -> Iterator[FormulaSource]:
        """Consecutive slices of exactly ``size`` rows (the last may be shorter)."""
        pending: list[str] = []
        first_row = 0
        for batch in iter_formulas(
            self.path, self.column, self.file_format, max_formula_length=self.max_formula_length
        ):
            pending.extend(batch)
            while len(pending) >= size:
                yield FormulaSource(pending[:size], first_row)
                first_row += size
                pending = pending[size:]
        if pending:
            yield FormulaSource(pending, first_row)

    def results(
        self, models: ScreenModels, start: int = 0, stop: int | None = None, chunk_size: int = 4096
    ) -> Iterator[ChunkResult]:
        stop = self.total if stop is None else min(stop, self.total)
        for part in self.batches(chunk_size):
            low, high = max(start, part.first_row), min(stop, part.first_row + part.total)
            if low < high:
                yield from part.results(models, low - part.first_row, high - part.first_row, chunk_size)


Source = EnumerationSource | FormulaSource | FileSource


def source_for(
    request: ScreenRequest,
    formulas: Sequence[str] | None = None,
    allowed_elements: Collection[str] | None = None,
) -> Source:
    """The request's source; formulas come from the request itself or from an uploaded file."""
    if request.chemsys is not None:
        space = ChemicalSpace.from_chemsys(
            request.chemsys, request.max_atoms, request.include_subsystems, allowed_elements
        )
        return EnumerationSource(space)
    return FormulaSource(formulas if formulas is not None else request.formulas or [])
