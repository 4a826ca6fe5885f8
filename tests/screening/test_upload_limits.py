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


async def test_a_parquet_file_of_millions_of_rows_is_refused_from_its_footer(models_dir, tmp_path):
    body = tiny_parquet(3_000_000)
    assert len(body) < 200_000
    async with serve(screen_settings(models_dir, tmp_path, screen_max_compositions=LIMIT)) as (_, client):
        tracemalloc.start()
        try:
            response = await client.post("/screen", files={"file": ("many.parquet", body)})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
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
