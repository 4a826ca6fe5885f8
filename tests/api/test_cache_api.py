"""The prediction cache as clients see it: restarts, new model versions, a database outage."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from app.chemistry.fingerprint import CHEMISTRY_DIR, chemistry_fingerprint, fingerprint_of
from tests.api.harness import (
    flush_cache_writes,
    make_settings,
    metric_total,
    metric_value,
    oqmd_formulas,
    serve,
)
from tests.model_factory import reference_outputs, write_model
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio

POSTGRES_URL = os.environ.get("IBRNET_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="IBRNET_TEST_POSTGRES_URL is not set")
# A port nothing listens on: connections are refused at once, like a database that is down.
UNREACHABLE_URL = "postgresql://ibrnet:ibrnet@127.0.0.1:9/ibrnet"


def band_gaps(body: dict) -> tuple[float, bool]:
    prediction = body["predictions"]["band_gap"]
    return prediction["value"], prediction["cached"]


async def test_restart_on_the_same_sqlite_file_answers_from_the_cache(settings):
    async with serve(settings) as (_, client):
        first = (await client.post("/predict", json={"formula": "LiCoO2"})).json()
        assert all(not p["cached"] for p in first["predictions"].values())
    # The lifespan's shutdown flushed the writer; a new process-equivalent app reads the file.
    async with serve(settings) as (_, client):
        again = (await client.post("/predict", json={"formula": "LiCoO2"})).json()
    for name, prediction in again["predictions"].items():
        assert prediction["cached"] is True
        assert prediction["value"] == pytest.approx(first["predictions"][name]["value"])
        assert prediction["version"] == first["predictions"][name]["version"]


async def test_a_new_model_version_never_serves_old_values(tmp_path, models_dir, sqlite_url):
    folder = tmp_path / "models" / "oqmd-band-gap"
    shutil.copytree(models_dir / "oqmd-band-gap", folder)
    settings = make_settings(tmp_path / "models", sqlite_url)
    async with serve(settings) as (app, client):
        old = (await client.post("/predict", json={"formula": "GaAs"})).json()["predictions"]["band_gap"]
        await flush_cache_writes(app)
        assert (await client.post("/predict", json={"formula": "GaAs"})).json()["predictions"]["band_gap"][
            "cached"
        ]

    write_model(folder, property_name="band_gap", unit="eV", seed=22, name="oqmd-band-gap")  # retrained
    async with serve(settings) as (app, client):
        new = (await client.post("/predict", json={"formula": "GaAs"})).json()["predictions"]["band_gap"]
        features = app.state.registry.get("band_gap").featurizer.transform(
            [app.state.predictor.parse("GaAs", frozenset({"Ga", "As"}))]
        )
    assert new["version"] != old["version"]
    assert new["cached"] is False
    assert new["value"] == pytest.approx(float(reference_outputs(folder, features)[0, 0]), rel=1e-5, abs=1e-5)
    assert new["value"] != pytest.approx(old["value"])


def test_the_chemistry_fingerprint_covers_key_rules_and_element_tables(tmp_path):
    copy = tmp_path / "chemistry"
    shutil.copytree(CHEMISTRY_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert fingerprint_of(copy) == chemistry_fingerprint()
    table = copy / "data" / "ward2016_elements.csv"
    table.write_text(table.read_text() + "\n")  # one more line in a table
    assert fingerprint_of(copy) != chemistry_fingerprint()
    rules = copy / "formula.py"
    shutil.copy(CHEMISTRY_DIR / "data" / "ward2016_elements.csv", table)
    rules.write_text(rules.read_text() + "\n# a changed key rule\n")
    assert fingerprint_of(copy) != chemistry_fingerprint()


async def test_a_chemistry_change_is_a_cache_miss_after_a_restart(settings, monkeypatch):
    async with serve(settings) as (app, client):
        first = (await client.post("/predict", json={"formula": "MgAl2O4"})).json()["predictions"]["band_gap"]
        await flush_cache_writes(app)
    # The same model file, but the parser's key rules or a featurizer table changed (a new release).
    monkeypatch.setattr("app.inference.registry.chemistry_fingerprint", lambda: "0123456789abcdef")
    async with serve(settings) as (_, client):
        changed = (await client.post("/predict", json={"formula": "MgAl2O4"})).json()["predictions"][
            "band_gap"
        ]
    monkeypatch.undo()
    async with serve(settings) as (_, client):
        same = (await client.post("/predict", json={"formula": "MgAl2O4"})).json()["predictions"]["band_gap"]
    assert first["cached"] is False and changed["cached"] is False and same["cached"] is True
    assert changed["version"] == first["version"]  # the model's version is unchanged; its cache key is not


async def test_unreachable_database_still_predicts_and_reports_degraded(models_dir):
    async with serve(make_settings(models_dir, UNREACHABLE_URL)) as (_, client):
        response = await client.post("/predict", json={"formula": "NaCl"})
        assert response.status_code == 200, response.text
        assert all(not p["cached"] for p in response.json()["predictions"].values())
        batch = await client.post("/predict/batch", json={"formulas": ["KCl", "NaCl", "Xx"]})
        assert batch.status_code == 200
        assert [("error" in item) for item in batch.json()["results"]] == [False, False, True]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "degraded"
        assert body["database"] == "unavailable"
        assert any("database unavailable" in reason for reason in body["reasons"])
        metrics = (await client.get("/metrics")).text
        assert 'ibrnet_cache_errors_total{operation="lookup_skipped"}' in metrics


async def test_repeats_are_answered_from_memory_even_while_the_database_is_down(models_dir):
    async with serve(make_settings(models_dir, UNREACHABLE_URL)) as (_, client):
        first = (await client.post("/predict", json={"formula": "NaCl"})).json()
        before = (await client.get("/metrics")).text
        again = (await client.post("/predict", json={"formula": "ClNa"})).json()  # the same composition
        after = (await client.get("/metrics")).text
        batch = (await client.post("/predict/batch", json={"formulas": ["NaCl", "KCl"]})).json()["results"]
    assert all(not p["cached"] for p in first["predictions"].values())
    # The repeat was answered on the event loop: no model's batcher saw it.
    submissions, hits = "ibrnet_batch_submissions_total", "ibrnet_cache_hits_total"
    assert metric_total(after, submissions) == metric_total(before, submissions)
    assert metric_total(after, hits) == metric_total(before, hits) + 3
    assert metric_value(after, "ibrnet_memory_cache_rows") == 3  # NaCl, for each of the three models
    remembered = {name: {**p, "cached": True} for name, p in first["predictions"].items()}
    assert again["predictions"] == remembered
    assert batch[0]["predictions"] == remembered
    assert all(not p["cached"] for p in batch[1]["predictions"].values())

    async with serve(make_settings(models_dir, UNREACHABLE_URL, memory_cache_rows=0)) as (_, client):
        for _ in range(2):  # no memory layer, no database: every answer is computed
            body = (await client.post("/predict", json={"formula": "NaCl"})).json()
            assert all(not p["cached"] for p in body["predictions"].values())


@pytest.mark.postgres
@needs_postgres
async def test_postgres_outage_degrades_then_recovers_by_itself(models_dir):
    assert POSTGRES_URL is not None
    proxy = TcpProxy(POSTGRES_URL)
    proxy.start()
    # The in-memory layer would answer MgO during the outage: this test is about the database.
    settings = make_settings(models_dir, proxy.url, memory_cache_rows=0)
    try:
        async with serve(settings) as (app, client):
            assert (await client.get("/ready")).status_code == 200
            value, cached = band_gaps((await client.post("/predict", json={"formula": "MgO"})).json())
            assert not cached
            await flush_cache_writes(app)
            assert band_gaps((await client.post("/predict", json={"formula": "MgO"})).json()) == (value, True)

            proxy.stop()  # the database goes away
            during = await client.post("/predict", json={"formula": "CaO"})
            assert during.status_code == 200 and band_gaps(during.json())[1] is False
            assert band_gaps((await client.post("/predict", json={"formula": "MgO"})).json()) == (
                value,
                False,
            )
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "degraded"

            proxy.start()  # ... and comes back: nobody restarts the service
            deadline = time.monotonic() + 60
            while (await client.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline, "the service did not notice the database came back"
                await asyncio.sleep(0.2)
            await flush_cache_writes(app)  # CaO, computed during the outage, was kept and written
            assert band_gaps((await client.post("/predict", json={"formula": "CaO"})).json())[1] is True
            assert band_gaps((await client.post("/predict", json={"formula": "MgO"})).json()) == (value, True)
    finally:
        proxy.stop()


@pytest.mark.postgres
@needs_postgres
async def test_restart_on_postgres_answers_from_the_cache(models_dir):
    assert POSTGRES_URL is not None
    settings = make_settings(models_dir, POSTGRES_URL)
    formula = "Li2MnSiO4"
    async with serve(settings) as (_, client):
        first = (await client.post("/predict", json={"formula": formula})).json()
    async with serve(settings) as (_, client):
        again = (await client.post("/predict", json={"formula": formula})).json()
    # The session's salted model versions are new to this database, so the first answer was computed.
    assert [p["cached"] for p in first["predictions"].values()] == [False] * 3
    assert [p["cached"] for p in again["predictions"].values()] == [True] * 3


async def test_the_cache_keeps_at_most_cache_max_rows(models_dir, sqlite_url):
    settings = make_settings(models_dir, sqlite_url, cache_max_rows=100)
    async with serve(settings) as (app, client):
        batch = await client.post("/predict/batch", json={"formulas": oqmd_formulas(300)})
        assert batch.status_code == 200
        await flush_cache_writes(app)
        assert app.state.store.count() <= 100 and app.state.writer.evicted > 0
