"""Stopped jobs can be deleted, and are deleted after the retention period (issue 17, defect 4)."""

from __future__ import annotations

import asyncio
import time

import pytest

import ibrnet
from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for
from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.anyio


async def test_a_stopped_job_is_purged_with_its_rows_and_a_running_one_is_not(models_dir, tmp_path):
    settings = screen_settings(models_dir, tmp_path, screen_chunk_pause_ms=200.0)
    async with serve(settings) as (app, client):
        done = (await client.post("/screen", json={"formulas": ["Fe2O3", "NaCl"]})).json()
        await wait_for(client, done["id"])
        running = (await client.post("/screen", json={"chemsys": "Li-Fe-O", "max_atoms": 12})).json()
        await wait_for(client, running["id"], statuses=("running",))
        refused = await client.delete(f"/screen/{running['id']}", params={"purge": "true"})
        finished = await client.delete(f"/screen/{done['id']}")  # without purge: a cancel, refused
        purged = await client.delete(f"/screen/{done['id']}", params={"purge": "true"})
        gone = await client.get(f"/screen/{done['id']}")
        rows_left = app.state.screening.jobs.count_results(done["id"])
        cancelled = (await client.delete(f"/screen/{running['id']}")).json()
        await asyncio.sleep(0.5)
        purged_after_cancel = await client.delete(f"/screen/{running['id']}", params={"purge": "true"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_running"
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "job_finished"
    assert purged.status_code == 200 and purged.json() == {"id": done["id"], "status": "deleted"}
    assert gone.status_code == 404 and rows_left == 0
    assert cancelled["status"] == "cancelled" and purged_after_cancel.status_code == 200


async def test_stopped_jobs_expire_after_the_retention_period(models_dir, tmp_path):
    settings = screen_settings(models_dir, tmp_path, screen_retention_hours=1.0 / 3600)  # one second
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json={"formulas": ["Fe2O3"]})).json()
        await wait_for(client, job["id"])
        deadline = time.monotonic() + 30
        while (await client.get(f"/screen/{job['id']}")).status_code != 404:
            assert time.monotonic() < deadline, "the job outlived its retention period"
            await asyncio.sleep(0.2)
        kept = screen_settings(models_dir, tmp_path / "kept", screen_retention_hours=0)
    tmp_path.joinpath("kept").mkdir()
    async with serve(kept) as (_, client):
        job = (await client.post("/screen", json={"formulas": ["Fe2O3"]})).json()
        await wait_for(client, job["id"])
        await asyncio.sleep(1.5)
        assert (await client.get(f"/screen/{job['id']}")).status_code == 200  # 0: kept forever


def test_the_python_client_deletes_a_stopped_job(models_dir, tmp_path):
    with (
        ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path) as (base, _),
        ibrnet.Client(base) as client,
    ):
        job = client.screen(formulas=["Fe2O3", "NaCl"], wait=False)
        rows = job.wait(progress=False)
        job.delete()
        with pytest.raises(ibrnet.ServiceError) as missing:
            job.status()
    assert len(rows) == 2 and missing.value.status == 404 and missing.value.code == "job_not_found"


async def test_files_of_a_running_job_wait_until_it_stops(models_dir, tmp_path):
    """A CSV read while the runner commits and re-ranks duplicated and lost rows (issue 17, defect 5)."""
    settings = screen_settings(models_dir, tmp_path, screen_chunk_pause_ms=100.0)
    request = {"chemsys": "Li-Fe-O", "max_atoms": 10, "sort_by": "band_gap"}
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json=request)).json()
        await wait_for(client, job["id"], statuses=("running",))
        early = [
            await client.get(f"/screen/{job['id']}/results", params={"format": name})
            for name in ("csv", "parquet")
        ]
        page = await client.get(f"/screen/{job['id']}/results")  # JSON: rows so far, to show progress
        await wait_for(client, job["id"])
        final = await client.get(f"/screen/{job['id']}/results", params={"format": "csv"})
        total = (await client.get(f"/screen/{job['id']}")).json()["progress"]["total"]
    assert [r.status_code for r in early] == [409, 409] and early[0].json()["error"]["code"] == "job_running"
    assert page.status_code == 200
    indices = [line.split(",", 1)[0] for line in final.text.splitlines()[1:]]
    assert len(indices) == len(set(indices)) == total


def _cap_database(engine, extra_pages: int | None) -> None:
    """SQLite's own size limit (PRAGMA max_page_count) on every connection: writes past it fail with
    SQLITE_FULL, the very error of a full disk. None lifts the limit again."""
    from sqlalchemy import event

    def cap(connection, _record) -> None:
        cursor = connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages + extra_pages if extra_pages else 1073741823}")
        cursor.close()

    for listener in list(getattr(engine, "_test_caps", [])):
        event.remove(engine, "connect", listener)
    event.listen(engine, "connect", cap)
    engine._test_caps = [cap]
    engine.dispose()  # pooled connections were opened without the cap


async def test_a_full_database_fails_the_job_frees_its_rows_and_the_service_recovers(models_dir, tmp_path):
    """A full disk left the job "running" for ever while the runner retried (issue 17, defect 4)."""
    settings = screen_settings(models_dir, tmp_path, screen_chunk_pause_ms=20.0)
    async with serve(settings) as (app, client):
        jobs = app.state.screening.jobs
        _cap_database(jobs.engine, extra_pages=12)  # ~48 kB: a few chunks of this screen
        job = (await client.post("/screen", json={"chemsys": "Li-Fe-O", "max_atoms": 24})).json()
        failed = await wait_for(client, job["id"], statuses=("failed",))
        rows_left = jobs.count_results(job["id"])
        _cap_database(jobs.engine, extra_pages=None)
        again = (await client.post("/screen", json={"formulas": ["Fe2O3", "NaCl"]})).json()
        recovered = await wait_for(client, again["id"])
    assert failed["error"].startswith("storage_full: the database ran out of space"), failed
    assert "partial results were deleted" in failed["error"]
    assert rows_left == 0  # its room went back to the others
    assert recovered["status"] == "succeeded"


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
async def test_a_download_of_a_job_purged_while_it_is_sent_does_not_end_as_complete(
    models_dir, tmp_path, file_format
):
    """It ended with 200 and a well-formed last chunk, holding 20,001 of 75,462 lines."""
    from app.api.screen import JobGoneDuringDownload

    async with serve(screen_settings(models_dir, tmp_path, screen_chunk_size=4096)) as (app, client):
        job = (await client.post("/screen", json={"formulas": ["Fe2O3", "NaCl", "KBr"] * 4000})).json()
        await wait_for(client, job["id"])  # 12,000 rows: three download batches
        query = f"format={file_format}".encode()
        path = f"/screen/{job['id']}/results"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("ibrnet.test", 80), "headers": [],
        }  # fmt: skip
        sent: list[dict] = []

        async def receive() -> dict:
            await asyncio.sleep(3600)  # the client stays
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and len(sent) == 2:  # the first batch is out
                purged = await client.delete(f"/screen/{job['id']}", params={"purge": "true"})
                assert purged.status_code == 200, purged.text

        with pytest.raises(JobGoneDuringDownload):
            await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert all(message.get("more_body") for message in sent[1:])  # no last chunk was sent
