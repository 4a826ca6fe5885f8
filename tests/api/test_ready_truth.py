"""/ready tells the truth about the database, and the service recovers by itself (issue 17, defect 10)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import psycopg
import pytest

from tests.api.harness import flush_cache_writes, make_settings, serve
from tests.conftest import libpq_url, postgres_server_url

pytestmark = pytest.mark.anyio


async def ready_until(client, status: int, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/ready")
        if response.status_code == status:
            return response.json()
        assert time.monotonic() < deadline, f"/ready stayed {response.status_code}: {response.text}"
        await asyncio.sleep(0.2)


async def test_a_deleted_sqlite_file_is_noticed_and_a_new_one_takes_the_writes(models_dir, tmp_path):
    path = tmp_path / "cache.db"
    async with serve(make_settings(models_dir, f"sqlite:///{path}")) as (app, client):
        await ready_until(client, 200)
        for leftover in path.parent.glob("cache.db*"):  # the file, its WAL and shared memory
            leftover.unlink()
        body = await ready_until(client, 503)
        assert body["database"] == "unavailable" and "was deleted" in " ".join(body["reasons"])
        await ready_until(client, 200)  # a new file, schema included
        await client.post("/predict", json={"formula": "ZnS"})
        await flush_cache_writes(app)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM predictions").fetchone()[0] == 3  # three models


@pytest.mark.postgres
async def test_a_read_only_database_is_not_ready_and_recovers_when_writable(models_dir, postgres_schema_url):
    server = postgres_server_url()
    role = psycopg.conninfo.conninfo_to_dict(libpq_url(server))["user"]

    def read_only(on: bool) -> None:
        with psycopg.connect(libpq_url(server), autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")
            if on:
                admin.execute(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
            else:
                admin.execute(f'ALTER ROLE "{role}" RESET default_transaction_read_only')

    read_only(False)  # a run killed inside this test would have left the role read-only
    async with serve(make_settings(models_dir, postgres_schema_url)) as (app, client):
        await ready_until(client, 200)
        try:
            read_only(True)
            app.state.store.engine.dispose()  # what a failover does to pooled sessions
            body = await ready_until(client, 503)
            assert body["database"] == "unavailable" and "read-only" in " ".join(body["reasons"])
        finally:
            read_only(False)
        await ready_until(client, 200)  # recovered with no restart
        first = (await client.post("/predict", json={"formula": "CdTe"})).json()
        await flush_cache_writes(app)
        again = (await client.post("/predict", json={"formula": "CdTe"})).json()
    assert all(not p["cached"] for p in first["predictions"].values())
    assert all(p["cached"] for p in again["predictions"].values())
