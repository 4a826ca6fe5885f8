"""Helpers for the screening tests: settings, job polling, result paging."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings
from tests.api.harness import make_settings

# Guards against a hung job, not a performance threshold: the jobs here take well under a second.
JOB_TIMEOUT_S = 120


def screen_settings(models_dir: Path, tmp_path: Path, **overrides: Any) -> Settings:
    # Small chunks: every job here spans many commits, as a big job does.
    values = {"screen_chunk_size": 50, **overrides}
    return make_settings(models_dir, f"sqlite:///{tmp_path / 'jobs.db'}", **values)


async def wait_for(
    client: httpx.AsyncClient, job_id: str, statuses: tuple[str, ...] = ("succeeded",)
) -> dict:
    """Poll GET /screen/{id} until the job reaches one of ``statuses`` (or another final state)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        response = await client.get(f"/screen/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in statuses:
            return job
        assert job["status"] not in {"succeeded", "failed", "cancelled"}, job
        assert time.monotonic() < deadline, f"job still {job['status']} at {job['progress']}"
        await asyncio.sleep(0.02)


async def all_results(client: httpx.AsyncClient, job_id: str, page: int = 100) -> list[dict]:
    """Every result row, following next_offset page by page."""
    rows: list[dict] = []
    offset: int | None = 0
    while offset is not None:
        response = await client.get(f"/screen/{job_id}/results", params={"offset": offset, "limit": page})
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["results"]
        offset = body["next_offset"]
    return rows
