"""A small screen is not starved by a huge one queued before it (issue 17, defect 4)."""

from __future__ import annotations

import httpx
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


async def test_turns_go_round_the_clients_without_api_keys(models_dir, tmp_path):
    """One address queues three big screens, another a small one after them: with keys off the
    peer address is the client, and the small screen starts before the first's second and third."""
    settings = screen_settings(models_dir, tmp_path, screen_chunk_pause_ms=20.0, screen_slice_s=0.3)
    async with serve(settings) as (app, client):
        elsewhere = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("192.0.2.7", 50000)), base_url="http://ibrnet.test"
        )
        big = [(await client.post("/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 14})).json()["id"]
               for _ in range(3)]  # fmt: skip
        await wait_for(client, big[0], statuses=("running",))
        small = (await elsewhere.post("/screen", json={"formulas": ["NaCl", "KBr"]})).json()["id"]
        await wait_for(elsewhere, small)
        jobs = app.state.screening.jobs
        started = {job_id: jobs.get(job_id).started_at for job_id in [*big, small]}
        await elsewhere.aclose()
    assert all(started[job_id] is None or started[small] < started[job_id] for job_id in big[1:])
    assert started[big[0]] < started[small]
