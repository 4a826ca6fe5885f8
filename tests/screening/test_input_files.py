"""Reading uploaded formula files (app.screening.io) the way the upload route hands them over."""

from __future__ import annotations

import tempfile

import pytest

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
