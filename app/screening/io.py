"""Screening files: formulas in from CSV or Parquet, results out to CSV or Parquet, streamed.

Result tables have one fixed schema per set of properties, whatever the chunk: index (the
row's position in the input), formula, composition, then ``<property>``,
``<property>_uncertainty`` and ``<property>_in_domain`` for each property (null where a model gives
no uncertainty, records no training domain, or the formula was refused; e_above_hull's
``p_stable`` and ``known``, a flag, come with neither, and ``e_above_hull_error`` says why a row has
no e_above_hull), then the row's ``in_domain`` (inside every recorded domain), error_code and
error_message.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from app.chemistry.formula import clip_formula
from app.errors import DomainError, PayloadTooLargeError
from app.screening.compute import IN_DOMAIN, ChunkResult
from app.stability.assess import DERIVED_COLUMNS, E_ABOVE_HULL

Format = Literal["csv", "parquet"]
HULL_ERROR_COLUMN = f"{E_ABOVE_HULL}_error"  # the code of why a row has no e_above_hull
FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MEDIA_TYPES: dict[Format, str] = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


class InputFileError(DomainError):
    """An uploaded or named input file the screen cannot read."""


def format_of(name: str) -> Format:
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise InputFileError(
            "unsupported_file_type",
            f"{name!r} is neither .csv nor .parquet",
            file=name,
            supported=sorted(FORMATS),
        )
    return FORMATS[suffix]


# -- results --------------------------------------------------------------------------------------


def result_schema(properties: Sequence[str]) -> pa.Schema:
    fields = [
        pa.field("index", pa.int64()),
        pa.field("formula", pa.string()),
        pa.field("composition", pa.string()),
    ]
    for name in properties:
        fields += [pa.field(name, _TYPES.get(name, pa.float64()))]
        if name not in DERIVED_COLUMNS:  # p_stable and known are e_above_hull's: no uncertainty
            fields += [
                pa.field(f"{name}_uncertainty", pa.float64()),
                pa.field(f"{name}_in_domain", pa.bool_()),
            ]
        if name == E_ABOVE_HULL:  # why a row has none (outside_hull_reference, ...), as /predict says
            fields += [pa.field(HULL_ERROR_COLUMN, pa.string())]
    fields += [pa.field(IN_DOMAIN, pa.bool_())]  # inside every model's training domain (null: unknown)
    fields += [pa.field("error_code", pa.string()), pa.field("error_message", pa.string())]
    return pa.schema(fields)


# "known" is a flag (true where the composition is in the hull reference), not a number.
_TYPES = {"known": pa.bool_()}


def chunk_table(result: ChunkResult, properties: Sequence[str]) -> pa.Table:
    columns: list[Any] = [result.row_index, result.formulas, result.compositions]
    for name in properties:
        # from_pandas: NaN (no value, no uncertainty) becomes null, not the text "nan".
        values = np.asarray(result.values[name], dtype=np.float64)
        if name in _TYPES:
            columns.append(pa.array(values == 1.0, _TYPES[name], mask=np.isnan(values)))
        else:
            columns.append(pa.array(values, pa.float64(), from_pandas=True))
        if name not in DERIVED_COLUMNS:
            columns.append(pa.array(result.uncertainties[name], pa.float64(), from_pandas=True))
            columns.append(_flags(result.domains.get(name), len(result)))
        if name == E_ABOVE_HULL:
            reasons = result.hull_errors or [None] * len(result)
            columns.append(
                pa.array([None if reason is None else reason["code"] for reason in reasons], pa.string())
            )
    columns.append(_flags(result.in_domain, len(result)))
    columns += [
        [None if error is None else error["code"] for error in result.errors],
        [None if error is None else error["message"] for error in result.errors],
    ]
    return pa.Table.from_arrays(columns, schema=result_schema(properties))


def _flags(domain: np.ndarray | None, rows: int) -> pa.Array:
    """1.0/0.0/NaN as true/false/null (all null where the model records no domain)."""
    if domain is None:
        return pa.nulls(rows, pa.bool_())
    return pa.array(domain == 1.0, pa.bool_(), mask=np.isnan(domain))


def rows_table(rows: Sequence[dict[str, Any]], properties: Sequence[str]) -> pa.Table:
    """API-shaped rows ({index, formula, composition, predictions | error}) as a result table."""
    values = {name: np.full(len(rows), np.nan) for name in properties}
    uncertainties = {name: np.full(len(rows), np.nan) for name in properties}
    for i, row in enumerate(rows):
        for name, prediction in (row.get("predictions") or {}).items():
            values[name][i] = np.nan if prediction["value"] is None else prediction["value"]
            uncertainty = prediction.get("uncertainty")
            uncertainties[name][i] = np.nan if uncertainty is None else uncertainty
            # e_above_hull's companion columns (p_stable, known) ride in its answer: unfold them.
            for column in DERIVED_COLUMNS:
                if column in values and prediction.get(column) is not None:
                    values[column][i] = float(prediction[column])
    hull_errors = [((row.get("predictions") or {}).get(E_ABOVE_HULL) or {}).get("error") for row in rows]
    result = ChunkResult(
        row_index=np.array([row["index"] for row in rows], dtype=np.int64),
        formulas=[row["formula"] for row in rows],
        compositions=[row.get("composition") for row in rows],
        values=values,
        uncertainties=uncertainties,
        errors=[row.get("error") for row in rows],
        domains=_domains(rows),
        hull_errors=hull_errors,
    )
    return chunk_table(result, properties)


def _domains(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per property, the API rows' in_domain as ChunkResult holds it (only properties that say it)."""
    flags: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        for name, prediction in (row.get("predictions") or {}).items():
            if prediction.get(IN_DOMAIN) is not None:
                flags.setdefault(name, np.full(len(rows), np.nan))[i] = float(prediction[IN_DOMAIN])
    return flags


class ResultWriter:
    """Appends result tables to a CSV or Parquet file (or binary stream) as they arrive."""

    def __init__(self, sink: str | Path | IO[bytes], properties: Sequence[str], file_format: Format) -> None:
        self.schema = result_schema(properties)
        self.rows = 0
        self._writer: pa_csv.CSVWriter | pq.ParquetWriter
        if file_format == "csv":
            self._writer = pa_csv.CSVWriter(sink, self.schema)
        else:
            self._writer = pq.ParquetWriter(sink, self.schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DrainedSink(io.RawIOBase):
    """A write-only stream whose bytes are taken away as they come (``drain``), while ``tell``
    keeps counting: a Parquet writer's footer records absolute offsets, so a file can be sent
    row group by row group without ever being held whole."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


# -- inputs -------------------------------------------------------------------------------------


def read_formulas(
    source: str | Path | IO[bytes],
    column: str,
    file_format: Format,
    max_rows: int | None = None,
    max_formula_length: int | None = None,
) -> list[str]:
    """Every formula of a CSV or Parquet file, in file order (the job stores them anyway).

    With ``max_rows``, a larger file is refused as it is read, never after: a Parquet file by the
    row count in its footer before any data is decompressed (96 KB can hold 30M rows), a CSV at
    the first batch past the limit. With ``max_formula_length``, a Parquet column whose footer
    says it unpacks to more than such formulas can fill is refused before it is unpacked (46 KB
    of zstd held one 500 MB cell).
    """
    if file_format == "parquet" and (max_rows is not None or max_formula_length is not None):
        try:
            metadata = pq.ParquetFile(source).metadata
        except (pa.ArrowInvalid, OSError) as error:
            raise InputFileError(
                "unreadable_file", f"cannot read the parquet file: {error}", format="parquet"
            ) from None
        if max_rows is not None:
            _check_rows(metadata.num_rows, max_rows)
        if max_formula_length is not None:
            _check_unpacked_size(metadata, column, max_formula_length)
        if hasattr(source, "seek"):
            source.seek(0)  # type: ignore[union-attr]
    formulas: list[str] = []
    for batch in iter_formulas(source, column, file_format, max_formula_length=max_formula_length):
        formulas.extend(batch)
        if max_rows is not None:
            _check_rows(len(formulas), max_rows, at_least=file_format == "csv")
    return formulas


# What a formula column may unpack to, read from the footer before anything is unpacked: on
# average 128 bytes a row (a formula of ~120 characters and its offset; real files hold ~20) and
# 1 MiB for page headers and statistics, over the whole file. (Per row group, the slack let 40
# one-row groups of 1 MiB cells through; a bound of the longest formula per row let 99,999 empty
# rows pay for one 60 MB cell.) A cell over the length limit in a file within it is clipped
# while still in Arrow (_texts) and refused alone, as formula_too_long.
_AVERAGE_ROW_BYTES, _SLACK_BYTES = 128, 1 << 20


def _check_unpacked_size(metadata: pq.FileMetaData, column: str, max_formula_length: int) -> None:
    unpacked = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema == column:
                unpacked += chunk.total_uncompressed_size
    per_row = min(_AVERAGE_ROW_BYTES, 4 * max_formula_length + 16)
    if unpacked > metadata.num_rows * per_row + _SLACK_BYTES:
        raise PayloadTooLargeError(
            "formula_column_too_large",
            f"column {column!r} unpacks to {unpacked:,} bytes for {metadata.num_rows:,} rows, more than "
            f"{per_row} bytes a row on average: a column of formulas is far smaller",
            column=column,
            limit=per_row,
        )


def _check_rows(rows: int, max_rows: int, at_least: bool = False) -> None:
    if rows > max_rows:
        counted = f"at least {rows:,}" if at_least else f"{rows:,}"
        raise PayloadTooLargeError(
            "too_many_compositions",
            f"the file has {counted} rows, the limit is {max_rows:,} (IBRNET_SCREEN_MAX_COMPOSITIONS)",
            count=rows,
            limit=max_rows,
        )


def iter_formulas(
    source: str | Path | IO[bytes],
    column: str,
    file_format: Format,
    batch_size: int = 65_536,
    max_formula_length: int | None = None,
) -> Iterator[list[str]]:
    """The file's formula column, a batch at a time (memory stays at one batch). With
    ``max_formula_length``, a longer formula comes as clip_formula makes it (a LongFormula of its
    first characters), cut while still in Arrow: a 60 MB cell never becomes a Python string."""
    try:
        batches = _batches(source, column, file_format, batch_size)
        rows = 0
        for batch in batches:
            if file_format == "csv":
                _refuse_runaway_quote(batch.column(0), rows)
            yield _texts(batch.column(0), max_formula_length)
            rows += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise InputFileError(
            "unreadable_file", f"cannot read the {file_format} file: {error}", format=file_format
        ) from None


def _refuse_runaway_quote(column: pa.Array, rows_before: int) -> None:
    """A CSV formula cell over several lines is a quote left open: it took in the rows after it
    (a 1,000-row file became a 2-row screen), so the file is refused, not screened short."""
    spans_lines = pc.match_substring_regex(column, r"[\r\n]").fill_null(False)
    if pc.any(spans_lines).as_py():
        row = rows_before + pc.index(spans_lines, True).as_py() + 1
        raise InputFileError(
            "unreadable_file",
            f"data row {row:,} of the csv file runs over several lines: a formula is one line, and a "
            'quote (") opened there and not closed where the formula ends takes in the rows after it',
            format="csv",
            row=row,
        )


def _texts(column: pa.Array, max_formula_length: int | None) -> list[str]:
    lengths = None
    if max_formula_length is not None and len(column):
        # clip_formula's rule, in Arrow: the length is counted without surrounding whitespace
        lengths = pc.utf8_length(pc.utf8_trim_whitespace(column)).fill_null(0)
        if pc.max(lengths).as_py() <= max_formula_length:
            lengths = None
        else:
            column = pc.utf8_slice_codeunits(column, 0, max_formula_length)
    texts = ["" if text is None else text for text in column.to_pylist()]
    if lengths is not None:
        for row in np.flatnonzero(lengths.to_numpy() > max_formula_length):
            texts[row] = clip_formula(texts[row], max_formula_length, int(lengths[row].as_py()))
    return texts


def count_formulas(source: str | Path, column: str, file_format: Format) -> int:
    """Rows in the file: Parquet says so in its footer; a CSV takes one cheap pass."""
    if file_format == "parquet":
        return pq.ParquetFile(source).metadata.num_rows
    return sum(batch.num_rows for batch in _batches(source, column, "csv", 1 << 20))


def _batches(
    source: str | Path | IO[bytes], column: str, file_format: Format, batch_size: int
) -> Iterator[Any]:
    if file_format == "parquet":
        parquet = pq.ParquetFile(source)
        if column not in parquet.schema_arrow.names:
            raise _missing_column(column, parquet.schema_arrow.names)
        schema = parquet.schema_arrow  # with two columns of the name, iter_batches reads the first
        text = _text_type(column, schema.field(schema.get_all_field_indices(column)[0]).type)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=[column]):
            # binary is read as UTF-8 text (invalid UTF-8: unreadable_file), not as "b'Fe2O3'"
            if batch.schema.field(0).type != text:
                batch = pa.RecordBatch.from_arrays([batch.column(0).cast(text)], names=[column])
            yield batch
        return
    names = _csv_header(source)
    if column not in names:
        raise _missing_column(column, names)
    options = pa_csv.ConvertOptions(column_types={column: pa.string()}, include_columns=[column])
    read = pa_csv.ReadOptions(block_size=1 << 22)
    yield from pa_csv.open_csv(source, read_options=read, convert_options=options)


def _text_type(column: str, given: pa.DataType) -> pa.DataType:
    """The string type a Parquet formula column is read as; a column of numbers, dates or lists is
    refused by its type instead of every row failing as its printed value."""
    if pa.types.is_dictionary(given):
        given = given.value_type
    if pa.types.is_string(given) or pa.types.is_large_string(given) or pa.types.is_string_view(given):
        return given
    if pa.types.is_binary(given) or pa.types.is_large_binary(given):
        return pa.large_string() if pa.types.is_large_binary(given) else pa.string()
    raise InputFileError(
        "unsupported_column_type",
        f"column {column!r} holds {given}, not text: a formula column holds strings",
        column=column,
        type=str(given),
    )


def _csv_header(source: str | Path | IO[bytes]) -> list[str]:
    """The CSV's column names, read before pyarrow opens it. (Asking pyarrow again after it refused
    the column raced with its read-ahead thread on the shared file position: now and then the
    second read saw a garbled stream and a missing column was reported as an unreadable file.)

    Read from the file's first bytes by the csv module, so a header ends at newline, CR LF or a lone
    CR (old Mac and some Excel exports), as pyarrow reads it; a header it cannot read is a 422."""
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            first = handle.read(_HEADER_BYTES)
    else:
        start = source.tell()
        first = source.read(_HEADER_BYTES)
        source.seek(start)
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text": names came out garbled
        raise InputFileError(
            "unreadable_file", "the csv file is UTF-16; save it as UTF-8 (CSV UTF-8 in Excel)", format="csv"
        )
    text = first.decode("utf-8-sig", errors="replace")
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as error:
        raise InputFileError(
            "unreadable_file", f"cannot read the csv header: {error}", format="csv"
        ) from None


_HEADER_BYTES = 1 << 20  # a header longer than this is cut (its last names are not found)


def _missing_column(column: str, names: Sequence[str]) -> InputFileError:
    return InputFileError(
        "missing_column",
        f"the file has no column {column!r}; its columns are {list(names)}",
        column=column,
        columns=list(names),
    )
