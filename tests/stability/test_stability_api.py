"""``e_above_hull`` through the real service: /predict, /predict/batch (JSON, CSV, NDJSON), start-up."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from scipy.special import ndtr

from app.inference.manifest import ModelManifest, StabilityCalibration
from app.stability.reference import HullReferenceError
from tests.api.harness import flush_cache_writes, make_settings, serve

pytestmark = pytest.mark.anyio

HULL_AT_HALF_OXYGEN = -1.5  # the paper hull of conftest.PAPER_REFERENCE at x_O = 1/2


def uncached(result: dict) -> dict:
    """A result without its ``cached`` flags (a repeated request is answered from the cache)."""
    predictions = {name: {**p, "cached": None} for name, p in result.get("predictions", {}).items()}
    return {**result, "predictions": predictions} if predictions else result


@pytest.fixture
def settings(mp_models_dir, paper_reference, tmp_path):
    return make_settings(mp_models_dir, f"sqlite:///{tmp_path / 'cache.db'}", hull_reference=paper_reference)


async def test_predict_answers_e_above_hull_from_the_mp_model_and_the_reference(settings):
    async with serve(settings) as (_, client):
        body = (await client.post("/predict", json={"formula": "Li2O2"})).json()
    source, stability = body["predictions"]["formation_energy_mp"], body["predictions"]["e_above_hull"]
    assert list(body["predictions"])[-1] == "e_above_hull"  # asked for by default, after the models
    assert stability["value"] == pytest.approx(source["value"] - HULL_AT_HALF_OXYGEN, abs=1e-6)
    assert stability["uncertainty"] == source["uncertainty"] and stability["uncertainty"] > 0
    assert stability["p_stable"] == pytest.approx(ndtr(-stability["value"] / stability["uncertainty"]))
    assert stability["decomposition"] == pytest.approx({"Li2O": 0.75, "O": 0.25})
    assert stability["known"] is True and stability["unit"] == "eV/atom" and stability["error"] is None
    assert stability["model"] == source["model"] and stability["version"] == source["version"]
    assert stability["reference"]["name"] == "li-o.csv" and len(stability["reference"]["sha256"]) == 12


async def test_p_stable_goes_through_the_source_models_calibration_curve(
    mp_models_dir, paper_reference, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(mp_models_dir, models)
    manifest = ModelManifest.load(models / "mp-formation-energy")
    manifest.stability = StabilityCalibration(gaussian=[0.0, 1.0], observed=[0.2, 0.6], calibration_rows=2)
    manifest.save(models / "mp-formation-energy")
    settings = make_settings(models, f"sqlite:///{tmp_path / 'cache.db'}", hull_reference=paper_reference)
    async with serve(settings) as (_, client):
        body = (await client.post("/predict/batch", json={"formulas": ["Li2O2", "Li"]})).json()
    stability = body["results"][0]["predictions"]["e_above_hull"]
    gaussian = ndtr(-stability["value"] / stability["uncertainty"])
    assert stability["p_stable"] == pytest.approx(0.2 + 0.4 * gaussian)
    assert body["results"][1]["predictions"]["e_above_hull"]["p_stable"] == 1.0  # an element: on its hull


async def test_asked_alone_e_above_hull_is_the_only_answer_and_is_cached_like_its_source(settings):
    async with serve(settings) as (app, client):
        first = (
            await client.post("/predict", json={"formula": "LiO2", "properties": ["e_above_hull"]})
        ).json()
        await flush_cache_writes(app)
    async with serve(settings) as (_, client):  # a restart: the source comes from the SQL cache
        again = (
            await client.post("/predict", json={"formula": "Li2O4", "properties": ["e_above_hull"]})
        ).json()
    assert (
        list(first["predictions"]) == ["e_above_hull"]
        and first["predictions"]["e_above_hull"]["known"] is False
    )
    assert again["predictions"]["e_above_hull"]["cached"] is True
    assert again["predictions"]["e_above_hull"]["value"] == first["predictions"]["e_above_hull"]["value"]


async def test_batch_json_csv_and_ndjson_carry_the_stability_fields(settings):
    formulas = ["Li2O2", "NaCl", "Xx2", "Li2O"]
    request = {"formulas": formulas, "properties": ["e_above_hull", "band_gap"]}
    async with serve(settings) as (_, client):
        results = (await client.post("/predict/batch", json=request)).json()["results"]
        as_csv = (await client.post("/predict/batch", json=request, headers={"accept": "text/csv"})).text
        ndjson = (
            await client.post("/predict/batch", json=request, headers={"accept": "application/x-ndjson"})
        ).text
    assert [list(r.get("predictions", {})) for r in results] == [["e_above_hull", "band_gap"]] * 2 + [[]] + [
        ["e_above_hull", "band_gap"]
    ]
    outside = results[1]["predictions"]["e_above_hull"]
    assert outside["value"] is None and outside["error"]["code"] == "outside_hull_reference"
    assert results[1]["predictions"]["band_gap"]["value"] is not None  # the other property is answered
    assert results[2]["error"]["code"] == "unknown_element"
    assert [uncached(json.loads(line)) for line in ndjson.splitlines()] == [uncached(r) for r in results]
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [row["formula"] for row in rows] == formulas
    assert float(rows[0]["e_above_hull"]) == results[0]["predictions"]["e_above_hull"]["value"]
    assert float(rows[0]["p_stable"]) == results[0]["predictions"]["e_above_hull"]["p_stable"]
    assert rows[0]["decomposition"] == "0.75 Li2O + 0.25 O" and rows[0]["known"] == "true"
    # Li2O, known and stable, against the hull of the others (Li -> Li2O2, keyed LiO): the same in
    # CSV as in JSON, with the reference's own value beside the prediction.
    assert rows[1]["e_above_hull"] == "" and rows[3]["decomposition"] == "0.6667 LiO + 0.3333 Li"
    li2o = results[3]["predictions"]["e_above_hull"]
    assert float(rows[3]["reference_value"]) == li2o["reference_value"] == pytest.approx(-2.0 + 1.4 * 2 / 3)
    assert rows[0]["reference_value"] == "0.1" or float(rows[0]["reference_value"]) == pytest.approx(0.1)
    assert rows[2]["error_code"] == "unknown_element"


async def test_without_an_mp_model_e_above_hull_is_an_unknown_property(models_dir, tmp_path, paper_reference):
    settings = make_settings(models_dir, f"sqlite:///{tmp_path / 'c.db'}", hull_reference=paper_reference)
    async with serve(settings) as (_, client):
        refused = await client.post("/predict", json={"formula": "Li2O", "properties": ["e_above_hull"]})
        everything = (await client.post("/predict", json={"formula": "Li2O"})).json()
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_property"
    assert "formation_energy_mp" in refused.json()["error"]["message"]
    assert "e_above_hull" not in everything["predictions"]


async def test_a_bad_reference_stops_the_start_up_naming_the_row(mp_models_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("formula,formation_energy\nLi2O,-2.0\nLiO2,-1.0\nLi2O4,-1.1\n")
    with pytest.raises(
        HullReferenceError, match=r"line 4 \('Li2O4'\): the same composition \(LiO2\) as line 3"
    ):
        async with serve(make_settings(mp_models_dir, f"sqlite:///{tmp_path / 'c.db'}", hull_reference=bad)):
            pass


async def test_an_unknown_property_lists_e_above_hull_among_the_available_ones(settings):
    async with serve(settings) as (_, client):
        unknown = await client.post("/predict", json={"formula": "Li2O", "properties": ["hardness"]})
        screen = await client.post("/screen", json={"chemsys": "Li-O", "sort_by": "hardness"})
        long = await client.post("/predict", json={"formula": "Li2O", "properties": ["x" * 1_000_000]})
    for refused in (unknown, screen):
        error = refused.json()["error"]
        assert refused.status_code == 422 and error["code"] == "unknown_property"
        assert "e_above_hull" in error["available"] and "e_above_hull" in error["message"]
    # A name no property could have is refused by its length, and not echoed back a megabyte long.
    assert long.status_code == 422 and long.json()["error"]["code"] == "invalid_request"
    assert len(long.content) < 10_000
