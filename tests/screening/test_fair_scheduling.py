"""A small screen is not starved by a huge one queued before it (issue 17, defect 4)."""

from __future__ import annotations

import pytest

from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for

pytestmark = pytest.mark.anyio


async def test_a_small_job_finishes_while_a_huge_one_is_still_running(models_dir, tmp_path):
    # 50-row chunks with a 20 ms pause: the big screen takes many seconds, its turns 0.3 s.
    settings = screen_settings(models_dir, tmp_path, screen_chunk_pause_ms=20.0, screen_slice_s=0.3)
    async with serve(settings) as (_, client):
        big = (await client.post("/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 14})).json()
        await wait_for(client, big["id"], statuses=("running",))
        small = (await client.post("/screen", json={"formulas": ["NaCl", "KBr"]})).json()
        await wait_for(client, small["id"])
        during = (await client.get(f"/screen/{big['id']}")).json()
        await wait_for(client, big["id"])
        after = (await client.get(f"/screen/{big['id']}")).json()
        rows = (await client.get(f"/screen/{big['id']}/results", params={"format": "csv"})).text.splitlines()[
            1:
        ]
    assert (
        during["status"] in ("running", "queued") and during["progress"]["done"] < during["progress"]["total"]
    )
    # The big job gave its turn and came back: every row once, no resume counted.
    assert after["status"] == "succeeded" and after["attempts"] == 1
    indices = [row.split(",", 1)[0] for row in rows]
    assert len(indices) == len(set(indices)) == after["progress"]["total"]
