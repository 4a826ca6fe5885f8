"""Python's garbage collector while serving (app/collector.py): thresholds, pauses in /metrics,
and the behaviour the thresholds exist for: a burst of cold predictions runs no full collection."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from app.cli import main
from app.collector import PYTHON_DEFAULT_THRESHOLDS
from app.settings import Settings
from tests.api.harness import make_settings, metric_value, oqmd_formulas, serve

pytestmark = pytest.mark.anyio


async def full_collections(client) -> float:
    text = (await client.get("/metrics")).text
    return metric_value(text, "ibrnet_gc_collections_total", generation="2")


async def test_the_app_collects_at_its_thresholds_reports_pauses_and_restores_python_s(
    models_dir, sqlite_url
):
    before = gc.get_threshold()
    async with serve(make_settings(models_dir, sqlite_url, gc_thresholds=(12_345, 7, 9))) as (_, client):
        assert gc.get_threshold() == (12_345, 7, 9)
        counted = await full_collections(client)
        gc.collect()  # a real full collection, seen through the service's metrics
        text = (await client.get("/metrics")).text
        assert metric_value(text, "ibrnet_gc_collections_total", generation="2") == counted + 1
        assert metric_value(text, "ibrnet_gc_pause_seconds_total", generation="2") > 0
        assert metric_value(text, "ibrnet_gc_longest_pause_seconds", generation="2") > 0
    assert gc.get_threshold() == before


@pytest.mark.parametrize(
    ("thresholds", "full_collections_expected"),
    [(Settings().gc_thresholds, False), (PYTHON_DEFAULT_THRESHOLDS, True)],
    ids=["serving", "python-defaults"],
)
async def test_a_burst_of_cold_predictions_runs_a_full_collection_only_at_python_s_thresholds(
    models_dir, sqlite_url, thresholds, full_collections_expected
):
    # Each distinct formula stays remembered (parse memo, in-memory predictions): at Python's
    # thresholds they pile up into full collections that scan all of them; at the service's none
    # runs. The Python-defaults case proves the burst is big enough to tell them apart.
    formulas = oqmd_formulas(12_000, split="train")
    async with serve(make_settings(models_dir, sqlite_url, gc_thresholds=thresholds)) as (_, client):
        counted = await full_collections(client)
        response = await client.post("/predict/batch", json={"formulas": formulas})
        assert response.status_code == 200
        assert all("predictions" in item for item in response.json()["results"])
        ran = await full_collections(client) - counted
    assert (ran > 0) is full_collections_expected, f"{ran} full collections at {thresholds}"


def test_thresholds_read_from_the_environment_and_bad_ones_are_refused(monkeypatch):
    monkeypatch.setenv("IBRNET_GC_THRESHOLDS", " 20000, 5,5 ")
    assert Settings().gc_thresholds == (20_000, 5, 5)
    refused = {
        "0,10,10": "three integers from 1",
        "2147483648,1,1": "three integers from 1",  # past a C int: was a traceback at start-up
        "99999999999999999999,1,1": "three integers from 1",
        "700,10": "gc_thresholds",
        "a,b,c": "gc_thresholds",
    }
    for bad, named in refused.items():
        monkeypatch.setenv("IBRNET_GC_THRESHOLDS", bad)
        with pytest.raises(ValidationError, match=named):
            Settings()


def test_a_bad_setting_stops_the_server_with_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("IBRNET_GC_THRESHOLDS", "2147483648,1,1")  # a traceback at start-up before
    monkeypatch.setenv("IBRNET_DATABASE_URL", "mysql://db")
    assert main(["serve", "--port", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "ibrnet serve: IBRNET_DATABASE_URL: must be sqlite:// or postgresql:// (got 'mysql://db')",
        "ibrnet serve: IBRNET_GC_THRESHOLDS: three integers from 1 to 1,000,000,000, like 50000,20,20 "
        "(got '2147483648,1,1')",
    ]
