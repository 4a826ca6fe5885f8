"""Text cells of CSV answers, made safe to open in a spreadsheet.

A CSV cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return) is read as a
formula by Excel, LibreOffice and Google Sheets: a formula text sent as ``=HYPERLINK(...)`` would
come back from /predict/batch or a screen download as a live formula in a colleague's sheet. Such
cells get a leading apostrophe (OWASP's advice), which the spreadsheet shows as plain text. Only
text columns are touched; numbers keep their sign.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = ("formula", "error_message")


def defused(text: Any) -> Any:
    """``text`` with an apostrophe in front when a spreadsheet would evaluate it; other values as is."""
    if isinstance(text, str) and text.startswith(_FORMULA_STARTS):
        return f"'{text}"
    return text


def defused_table(table: pa.Table) -> pa.Table:
    """The table with its text columns (``TEXT_COLUMNS``) defused."""
    for name in TEXT_COLUMNS:
        if name in table.column_names:
            index = table.column_names.index(name)
            values = [defused(value) for value in table.column(name).to_pylist()]
            table = table.set_column(index, name, pa.array(values, pa.string()))
    return table
