"""CSV answers never hand a spreadsheet a live formula (issue 17, defect 11)."""

from __future__ import annotations

import csv
import io

import pyarrow.parquet as pq
import pytest

from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for

pytestmark = pytest.mark.anyio

HOSTILE = ['=HYPERLINK("http://example.invalid","x")', "+1+2", "@SUM(A1)", "-2+3", "\tFe"]


async def test_predict_batch_csv_defuses_formula_text(client):
    body = {"formulas": [*HOSTILE, "Fe2O3"]}
    text = (await client.post("/predict/batch", json=body, headers={"accept": "text/csv"})).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["formula"] for row in rows[:-1]] == [f"'{formula}" for formula in HOSTILE]
    assert rows[-1]["formula"] == "Fe2O3" and float(rows[-1]["formation_enthalpy"])  # numbers untouched
    assert all(not row["error_message"].startswith(("=", "+", "-", "@")) for row in rows)


async def test_screen_csv_download_defuses_formula_text_and_parquet_keeps_it(models_dir, tmp_path):
    async with serve(screen_settings(models_dir, tmp_path)) as (_, client):
        job = (await client.post("/screen", json={"formulas": [*HOSTILE, "NaCl"]})).json()
        await wait_for(client, job["id"])
        text = (await client.get(f"/screen/{job['id']}/results", params={"format": "csv"})).text
        parquet = await client.get(f"/screen/{job['id']}/results", params={"format": "parquet"})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["formula"] for row in rows[:-1]] == [f"'{formula}" for formula in HOSTILE]
    assert rows[-1]["formula"] == "NaCl"
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("formula").to_pylist()[:-1] == HOSTILE  # a typed file is not a spreadsheet
