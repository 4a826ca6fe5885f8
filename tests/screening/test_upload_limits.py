"""An upload over the row limit is refused while it is read, not after (issue 17, defect 2)."""

from __future__ import annotations

import io
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.api.harness import serve
from tests.screening.helpers import screen_settings

pytestmark = pytest.mark.anyio

LIMIT = 1000


def tiny_parquet(rows: int) -> bytes:
    """Millions of rows in a few kilobytes: one formula, dictionary- and run-length encoded."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"formula": pa.array(["Fe2O3"] * rows)}), buffer, compression="zstd")
    return buffer.getvalue()


async def upload_measured(client, name: str, body: bytes, headers: dict | None = None):
    """POST /screen with a file, and the peak of Python allocations while it is answered."""
    tracemalloc.start()
    try:
        response = await client.post("/screen", files={"file": (name, body)}, headers=headers)
        return response, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_parquet_file_of_millions_of_rows_is_refused_from_its_footer(models_dir, tmp_path):
    body = tiny_parquet(3_000_000)
    assert len(body) < 200_000
    async with serve(screen_settings(models_dir, tmp_path, screen_max_compositions=LIMIT)) as (_, client):
        response, peak = await upload_measured(client, "many.parquet", body)
        jobs = (await client.get("/screen")).json()["jobs"]
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert (
        error["code"] == "too_many_compositions" and error["count"] == 3_000_000 and error["limit"] == LIMIT
    )
    assert peak < 32 * 1024 * 1024, f"{peak / 1e6:.0f} MB of Python objects to refuse the file"
    assert jobs == []


async def test_a_csv_over_the_limit_is_refused_at_the_first_batch_past_it(models_dir, tmp_path):
    body = ("formula\n" + "NaCl\n" * (LIMIT + 1)).encode()
    async with serve(screen_settings(models_dir, tmp_path, screen_max_compositions=LIMIT)) as (_, client):
        response = await client.post("/screen", files={"file": ("many.csv", body)})
        fits = await client.post("/screen", files={"file": ("few.csv", b"formula\nNaCl\nKBr\n")})
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_compositions"
    assert "at least" in response.json()["error"]["message"]
    assert fits.status_code == 202


def parquet_of(column: pa.Array) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"formula": column}), buffer, compression="zstd", use_dictionary=False)
    return buffer.getvalue()


async def test_a_parquet_cell_that_unpacks_past_any_formula_is_refused_from_its_footer(models_dir, tmp_path):
    """46 KB of zstd held one 500 MB formula: it was unpacked, stored and echoed whole."""
    body = parquet_of(pa.array(["Fe2O3" * 4_000_000], pa.large_string()))  # 20 MB of text
    assert len(body) < 100_000
    async with serve(screen_settings(models_dir, tmp_path)) as (_, client):
        response, peak = await upload_measured(client, "bomb.parquet", body)
        jobs = (await client.get("/screen")).json()["jobs"]
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "formula_column_too_large" and "'formula'" in error["message"]
    assert peak < 10 * 1024 * 1024, f"{peak / 1e6:.0f} MB of Python objects to refuse the file"
    assert jobs == []


async def test_a_key_past_its_share_is_refused_from_the_footer_too(models_dir, tmp_path):
    """The key's row quota was checked after the whole file was decoded (10M rows in 32 KB)."""
    settings = screen_settings(
        models_dir,
        tmp_path,
        api_keys="alpha-key",
        screen_max_rows_per_key=LIMIT,
        screen_max_compositions=10**7,
    )
    async with serve(settings) as (_, client):
        response, peak = await upload_measured(client, "many.parquet", tiny_parquet(3_000_000), KEY)
        fits = await client.post("/screen", files={"file": ("few.parquet", tiny_parquet(LIMIT))}, headers=KEY)
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded" and "3,000,000 rows" in error["message"]
    assert peak < 32 * 1024 * 1024, f"{peak / 1e6:.0f} MB of Python objects to refuse the file"
    assert fits.status_code == 202, fits.text


KEY = {"X-API-Key": "alpha-key"}
