"""A chunk longer than the lease: the runner's heartbeat keeps the job its own (hostile pass, 2026-12-02).

Commits renew the lease, but a single chunk can outlast it; without a heartbeat a second worker
took the job over mid-chunk and both computed the same rows (attempts 1 -> 2 -> 3 in 11 s).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app.store.database import make_engine
from app.store.jobs import JobStore
from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for

pytestmark = pytest.mark.anyio

LEASE_S = 0.5


async def test_a_job_whose_one_chunk_outlasts_the_lease_is_not_taken_over(models_dir, tmp_path):
    # One chunk for the whole job (its compositions take seconds, many leases long, on any machine
    # we know: max_atoms 30, 41,373 of them, took 0.85 s on a 2-core AVX-512 EPYC; 45 gives 192,483).
    settings = screen_settings(models_dir, tmp_path, screen_chunk_size=1_000_000, screen_lease_s=LEASE_S)
    intruder = JobStore(make_engine(f"sqlite:///{tmp_path / 'jobs.db'}"))
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 45})).json()
        await wait_for(client, job["id"], statuses=("running",))
        started, tries, taken = time.monotonic(), 0, None
        while taken is None and (await client.get(f"/screen/{job['id']}")).json()["status"] == "running":
            taken = intruder.claim("intruder", lease_s=LEASE_S)  # what a second worker does
            tries += 1
            await asyncio.sleep(LEASE_S / 2)
        running_s = time.monotonic() - started
        finished = await wait_for(client, job["id"])
    assert taken is None, "a second worker took over a job whose runner was alive"
    assert running_s > 2 * LEASE_S and tries >= 3, running_s  # the chunk did outlast the lease
    assert finished["attempts"] == 1 and finished["progress"]["done"] == finished["progress"]["total"]


def test_chunks_grow_while_fast_and_shrink_to_the_target_when_slow():
    from app.screening.runner import MIN_CHUNK_ROWS, next_chunk_size

    assert next_chunk_size(256, 0.1, 1.0, 4096) == 512  # fast: twice as many
    assert next_chunk_size(4096, 0.1, 1.0, 4096) == 4096  # never past IBRNET_SCREEN_CHUNK_SIZE
    assert next_chunk_size(1000, 0.8, 1.0, 4096) == 1000  # near the target: kept
    assert next_chunk_size(1000, 100.0, 1.0, 4096) == MIN_CHUNK_ROWS  # a 100 s chunk: 10 rows -> the floor
    assert next_chunk_size(1000, 4.0, 1.0, 4096) == 250  # in proportion
    assert next_chunk_size(10, 0.1, 1.0, 10) == 10  # a chunk size under the floor is kept
