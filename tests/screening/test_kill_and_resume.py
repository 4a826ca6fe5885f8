"""A real ``ibrnet serve`` process is SIGKILLed in the middle of a screening job and restarted:
the job resumes where its last commit left it and ends with exactly the expected rows."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from app.screening.enumerate import ChemicalSpace
from app.screening.stoichiometry import StoichiometryEncoder
from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 180  # a hang guard; the job takes a few seconds
# Small chunks with a pause: the job spans many commits and several seconds, so the kill lands
# in the middle of it. A short lease: the restarted runner takes it over soon.
SERVER_ENV = {
    "IBRNET_SCREEN_CHUNK_SIZE": "16",
    "IBRNET_SCREEN_CHUNK_PAUSE_MS": "25",
    "IBRNET_SCREEN_LEASE_S": "1",
}


def stored_rows(database: Path, job_id: str) -> list[tuple[int, str]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT row_index, composition FROM screening_results WHERE job_id = ? ORDER BY row_index",
            (job_id,),
        ).fetchall()


def test_sigkill_mid_job_then_restart_finishes_with_exactly_the_expected_rows(
    models_dir: Path, tmp_path: Path
):
    database = tmp_path / "jobs.db"
    space = ChemicalSpace.from_chemsys("Li-Fe-P-O", 10)
    encoder = StoichiometryEncoder(space.elements, space.max_atoms)
    expected = [key for chunk in space.iter_amounts() for key in encoder.keys(chunk)]

    with ibrnet_serve(models_dir, f"sqlite:///{database}", tmp_path, SERVER_ENV) as (base, process):
        submitted = httpx.post(f"{base}/screen", json={"chemsys": "Li-O-P-Fe", "max_atoms": 10}, timeout=10)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (done := httpx.get(f"{base}/screen/{job_id}", timeout=10).json()["progress"]["done"]) < 160:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # no shutdown handler runs: a crash
        process.wait(timeout=10)

    # What the crash left: a job still marked running, whose committed progress matches its rows.
    with sqlite3.connect(database) as connection:
        status, done = connection.execute(
            "SELECT status, done FROM screening_jobs WHERE id = ?", (job_id,)
        ).fetchone()
    assert status == "running"
    assert 160 <= done < len(expected), "the kill did not land mid-job"
    assert [index for index, _ in stored_rows(database, job_id)] == list(range(done))

    with ibrnet_serve(models_dir, f"sqlite:///{database}", tmp_path, SERVER_ENV) as (base, _):
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := httpx.get(f"{base}/screen/{job_id}", timeout=10).json())["status"] != "succeeded":
            assert job["status"] in ("running", "queued"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["progress"] == {"done": len(expected), "total": len(expected)}
        assert job["attempts"] == 2  # claimed again after the crash: resumed, not resubmitted
        results = httpx.get(f"{base}/screen/{job_id}/results", params={"limit": 10_000}, timeout=30).json()

    rows = stored_rows(database, job_id)
    assert [index for index, _ in rows] == list(range(len(expected)))  # none missing, none twice
    assert [composition for _, composition in rows] == expected
    assert len({composition for _, composition in rows}) == len(expected)
    assert [row["composition"] for row in results["results"]] == expected
