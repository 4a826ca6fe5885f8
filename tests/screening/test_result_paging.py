"""Result pages by key and files sent a batch at a time (issue 17, defect 6)."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for

pytestmark = pytest.mark.anyio


async def all_pages(client, job_id: str, **params) -> list[dict]:
    rows, after = [], None
    while True:
        query = {"limit": 7, **params, **({"after": after} if after else {})}
        page = (await client.get(f"/screen/{job_id}/results", params=query)).json()
        rows += page["results"]
        after = page["next_after"]
        if after is None:
            return rows


@pytest.mark.parametrize(
    "request_body",
    [
        {"formulas": ["Fe2O3", "Xx", "NaCl", "GaAs", "Qq2", "KBr", "ZnS", "MgO"] * 3, "sort_by": "band_gap"},
        {"formulas": ["Fe2O3", "Xx", "NaCl", "GaAs", "Qq2", "KBr", "ZnS", "MgO"] * 3, "sort_by": "band_gap",
         "ascending": False},
        {"chemsys": "Li-Fe-O", "max_atoms": 5},
    ],
)  # fmt: skip
async def test_pages_by_key_give_every_row_once_in_the_order_of_offset_pages(
    models_dir, tmp_path, request_body
):
    async with serve(screen_settings(models_dir, tmp_path)) as (_, client):
        job = (await client.post("/screen", json=request_body)).json()
        await wait_for(client, job["id"])
        by_key = await all_pages(client, job["id"])
        whole = (await client.get(f"/screen/{job['id']}/results", params={"limit": 10_000})).json()["results"]
    assert [row["index"] for row in by_key] == [row["index"] for row in whole]
    assert len({row["index"] for row in by_key}) == len(whole)


async def test_a_bad_cursor_is_a_422(client):
    job = (await client.post("/screen", json={"formulas": ["NaCl"]})).json()
    await wait_for(client, job["id"])
    for cursor in ("x", "3:abc", "3:nan", "3:inf"):
        response = await client.get(f"/screen/{job['id']}/results", params={"after": cursor})
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_cursor", cursor


async def test_a_parquet_file_of_several_row_groups_is_whole(models_dir, tmp_path):
    async with serve(screen_settings(models_dir, tmp_path, screen_chunk_size=2000)) as (_, client):
        job = (
            await client.post(
                "/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 18, "sort_by": "band_gap"}
            )
        ).json()
        await wait_for(client, job["id"])
        total = (await client.get(f"/screen/{job['id']}")).json()["result_count"]
        body = (await client.get(f"/screen/{job['id']}/results", params={"format": "parquet"})).content
    parquet = pq.ParquetFile(io.BytesIO(body))
    assert total > 5000 and parquet.metadata.num_rows == total and parquet.metadata.num_row_groups >= 2
    gaps = parquet.read().column("band_gap").to_pylist()
    assert gaps == sorted(gaps)
