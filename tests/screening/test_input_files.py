"""Reading uploaded formula files (app.screening.io) the way the upload route hands them over."""

from __future__ import annotations

import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.chemistry.formula import LongFormula, clip_formula
from app.errors import PayloadTooLargeError
from app.screening.io import InputFileError, read_formulas


def _read_upload(content: bytes) -> list[str]:
    """The formulas of a small multipart file, held the way Starlette hands it to the route."""
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as handle:
        handle.write(content)
        handle.seek(0)
        return read_formulas(handle, "formula", "csv")


def test_a_missing_column_is_always_reported_as_such():
    # Regression: the column names used to be read by a second pyarrow pass that raced with the
    # first one's read-ahead thread; about 1 in 300 uploads came back as "unreadable_file".
    for _ in range(2000):
        with pytest.raises(InputFileError) as refused:
            _read_upload(b"name,target\nFe2O3,1\n")
        error = refused.value
        assert (error.code, error.details.get("columns")) == ("missing_column", ["name", "target"])


def test_the_formula_column_is_read_after_the_header_check():
    content = '\ufeffformula,target\nFe2O3,1\n"Li,Fe",2\nNaCl,3\n'.encode()
    assert _read_upload(content) == ["Fe2O3", "Li,Fe", "NaCl"]


@pytest.mark.parametrize(
    "content",
    [
        b'formula\nFe2O3\n"NaCl\n' + b"LiF\n" * 998,  # read as a 2-row file before
        b'formula\nFe2O3\n"NaCl\nLiF\nKCl\n',  # read as Fe2O3 and NaFe2ClO3 ... before
        b'formula,target\nFe2O3,1\n"Na\nCl",2\nKCl,3\n',
    ],
)
def test_a_quote_left_open_refuses_the_csv_rather_than_swallow_its_rows(content: bytes):
    with pytest.raises(InputFileError, match="data row 2 of the csv file runs over several lines") as refused:
        _read_upload(content)
    assert (refused.value.code, refused.value.details["row"]) == ("unreadable_file", 2)
    assert _read_upload(b'formula\nFe2O3\n"NaCl"\n"K,Cl"\n') == ["Fe2O3", "NaCl", "K,Cl"]  # closed: fine


def test_a_csv_whose_lines_end_in_a_lone_cr_is_read():
    """Old Mac and some Excel exports: the header check read the whole file as one line (500)."""
    assert _read_upload(b"formula,target\rFe2O3,1\rNaCl,2\r") == ["Fe2O3", "NaCl"]


def test_a_header_the_csv_module_cannot_read_is_unreadable_not_a_crash():
    with pytest.raises(InputFileError) as refused:
        _read_upload(b"formula," + b"a" * 200_000 + b"\nFe2O3,1\n")  # a name past csv's field limit
    assert refused.value.code == "unreadable_file" and "header" in refused.value.message


def _parquet_upload(column: pa.Array) -> list[str]:
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as handle:
        pq.write_table(pa.table({"formula": column}), handle)
        handle.seek(0)
        return read_formulas(handle, "formula", "parquet", max_rows=100, max_formula_length=256)


def test_a_binary_parquet_column_is_read_as_utf8_text():
    """It was stored as the text "b'Fe2O3'", and every row failed."""
    assert _parquet_upload(pa.array([b"Fe2O3", b"LiFePO4"], pa.binary())) == ["Fe2O3", "LiFePO4"]
    with pytest.raises(InputFileError) as refused:
        _parquet_upload(pa.array([b"Fe2O3", b"\xff"], pa.binary()))
    assert refused.value.code == "unreadable_file"


@pytest.mark.parametrize(
    "column",
    [pa.array([1, 2]), pa.array([[1], [2]]), pa.array([0, 1], pa.timestamp("s"))],
    ids=["int", "list", "timestamp"],
)
def test_a_parquet_column_that_is_not_text_is_refused_by_its_type(column):
    with pytest.raises(InputFileError) as refused:
        _parquet_upload(column)
    kind = str(column.type).split("<")[0].split("[")[0]  # Parquet keeps seconds as ms: "timestamp"
    assert refused.value.code == "unsupported_column_type" and f"holds {kind}" in refused.value.message


def test_a_dictionary_encoded_parquet_column_reads_as_its_strings():
    column = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["Fe2O3", "NaCl"]))
    assert _parquet_upload(column) == ["Fe2O3", "NaCl", "Fe2O3"]


def test_a_utf16_csv_is_refused_for_its_encoding_not_for_a_missing_column():
    with pytest.raises(InputFileError) as refused:
        _read_upload("formula,target\nFe2O3,1\n".encode("utf-16"))
    assert refused.value.code == "unreadable_file" and "UTF-16" in refused.value.message


def _parquet_bytes_upload(table: pa.Table, **write_options) -> list[str]:
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as handle:
        pq.write_table(table, handle, compression="zstd", use_dictionary=False, **write_options)
        handle.seek(0)
        return read_formulas(handle, "formula", "parquet", max_rows=10**6, max_formula_length=256)


@pytest.mark.parametrize(
    "table, options",
    [
        # 40 row groups of one 1 MiB cell: the slack was allowed per row group
        (pa.table({"formula": ["Fe2O3" * 210_000] * 40}), {"row_group_size": 1}),
        # 99,999 empty rows paying for one 60 MB cell: the allowance was the longest formula per row
        (pa.table({"formula": [""] * 99_999 + ["Fe2O3" * 12_000_000]}), {}),
    ],
    ids=["row-groups", "empty-rows"],
)
def test_a_parquet_column_is_bounded_over_the_whole_file_and_on_average(table, options):
    with pytest.raises(PayloadTooLargeError) as refused:
        _parquet_bytes_upload(table, **options)
    assert refused.value.code == "formula_column_too_large"


def test_one_overlong_formula_in_a_normal_file_comes_clipped_with_its_length():
    rows = ["Fe2O3", "  " + "Li" * 1000 + "  ", "NaCl", "   Fe2O3   "]
    read = _parquet_bytes_upload(pa.table({"formula": rows}))
    assert read[0] == "Fe2O3" and read[2] == "NaCl" and read[3] == "   Fe2O3   "
    assert (
        isinstance(read[1], LongFormula)
        and read[1].length == 2000
        and read[1] == ("  " + "Li" * 1000)[:256] + "…"
    )
    assert read[1] == clip_formula(rows[1], 256) and read[1].length == clip_formula(rows[1], 256).length


def test_a_parquet_file_with_two_formula_columns_reads_the_first():
    """schema.field(name) raised KeyError on a duplicated name: a 500."""
    table = pa.Table.from_arrays(
        [pa.array(["Fe2O3", "NaCl"]), pa.array(["x", "y"])], names=["formula", "formula"]
    )
    assert _parquet_bytes_upload(table) == ["Fe2O3", "NaCl"]


def test_a_clipped_formula_stays_too_long_under_a_limit_raised_since():
    from app.chemistry.formula import FormulaError, parse_formula

    clipped = clip_formula("Li" * 150, 256)  # 300 characters, kept as 256 and "…"
    with pytest.raises(FormulaError) as refused:
        parse_formula(clipped, max_length=512)  # a restart with a higher limit
    assert refused.value.code == "formula_too_long" and refused.value.details["length"] == 300
