"""``e_above_hull`` in screens: rows, sorting and filters on it and on p_stable, downloads, the
predicted hull of the system, and ``ibrnet screen`` on the command line."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import ibrnet
from app.chemistry.formula import parse_formula
from app.stability.assess import StabilityAssessor
from app.stability.reference import load_reference
from tests.api.harness import serve
from tests.screening.helpers import screen_settings, wait_for
from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.anyio


async def results_of(client, job_id: str) -> list[dict]:
    return (await client.get(f"/screen/{job_id}/results", params={"limit": 10_000})).json()["results"]


async def test_a_chemsys_screen_ranks_by_e_above_hull_and_builds_the_predicted_hull(
    mp_models_dir, paper_reference, tmp_path
):
    settings = screen_settings(mp_models_dir, tmp_path, hull_reference=paper_reference)
    request = {"chemsys": "Li-O", "max_atoms": 6, "sort_by": "e_above_hull"}
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json=request)).json()
        await wait_for(client, job["id"])
        rows = await results_of(client, job["id"])
        hull = (await client.get(f"/screen/{job['id']}/hull")).json()
        as_csv = (await client.get(f"/screen/{job['id']}/results", params={"format": "csv"})).text
    assessor = StabilityAssessor(load_reference(paper_reference))
    values = [row["predictions"]["e_above_hull"]["value"] for row in rows]
    assert len(rows) > 10 and values == sorted(values)
    for row in rows:
        parsed = parse_formula(row["composition"])
        stability = row["predictions"]["e_above_hull"]
        expected = (
            row["predictions"]["formation_energy_mp"]["value"]
            - assessor.hull_energies([parsed.amount_dict])[0]
        )
        if row["composition"] in {"Li", "O"}:  # the hull's terminal points: 0, whatever the model says
            expected = 0.0
        assert stability["value"] == pytest.approx(expected, abs=1e-9)
        assert 0 <= stability["p_stable"] <= 1 and stability["reference"]["name"] == "li-o.csv"
        assert stability["known"] is (row["composition"] in {"Li2O", "LiO", "O", "Li"})  # elements are known
        assert "p_stable" not in row["predictions"] and "known" not in row["predictions"]
    # The predicted hull: elements, known compounds still on it, every screened composition below
    # the known hull that survives on the new one, and nothing else.
    below = {row["composition"] for row in rows if row["predictions"]["e_above_hull"]["value"] < 0}
    sources = {phase["composition"]: phase["source"] for phase in hull["phases"]}
    assert sources["Li"] == "element" and sources["O"] == "element"
    assert {name for name, source in sources.items() if source == "predicted"} <= below
    assert hull["candidates_below_known_hull"] == len(below - {"Li2O", "LiO", "O", "Li"})
    table = list(csv.DictReader(io.StringIO(as_csv)))
    assert [float(r["e_above_hull"]) for r in table] == pytest.approx(values)
    # known is a flag, written as /predict/batch's CSV writes it; the companions have no uncertainty.
    assert {r["known"] for r in table} == {"true", "false"} and all(r["p_stable"] for r in table)
    assert "p_stable_uncertainty" not in table[0] and "known_uncertainty" not in table[0]


async def test_p_stable_sorts_and_filters_like_a_property(mp_models_dir, paper_reference, tmp_path):
    settings = screen_settings(mp_models_dir, tmp_path, hull_reference=paper_reference)
    request = {
        "chemsys": "Li-O",
        "max_atoms": 6,
        "sort_by": "p_stable",
        "ascending": False,
        "top_k": 5,
        "filters": {"e_above_hull": {"max": 0.5}, "known": {"max": 0}},
    }
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json=request)).json()
        await wait_for(client, job["id"])
        rows = await results_of(client, job["id"])
        formula_job = (await client.post("/screen", json={"formulas": ["Li2O", "NaCl"]})).json()
        await wait_for(client, formula_job["id"])
        no_hull = await client.get(f"/screen/{formula_job['id']}/hull")
        formula_rows = await results_of(client, formula_job["id"])
    probabilities = [row["predictions"]["e_above_hull"]["p_stable"] for row in rows]
    assert len(rows) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert all(row["predictions"]["e_above_hull"]["value"] <= 0.5 for row in rows)
    assert not any(row["predictions"]["e_above_hull"]["known"] for row in rows)  # new compositions only
    assert no_hull.status_code == 422 and no_hull.json()["error"]["code"] == "not_a_chemsys_screen"
    assert formula_rows[1]["predictions"]["e_above_hull"]["value"] is None  # Na, Cl: outside the reference


async def test_without_an_mp_model_a_stability_screen_is_refused_up_front(
    models_dir, paper_reference, tmp_path
):
    settings = screen_settings(models_dir, tmp_path, hull_reference=paper_reference)
    async with serve(settings) as (_, client):
        refused = await client.post("/screen", json={"chemsys": "Li-O", "sort_by": "p_stable"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_property"


def test_ibrnet_screen_writes_e_above_hull_and_the_predicted_hull(mp_models_dir, paper_reference, tmp_path):
    out, hull = tmp_path / "li-o.csv", tmp_path / "hull.json"
    environment = {
        **os.environ,
        "IBRNET_HULL_REFERENCE": str(paper_reference),
        "IBRNET_INTRA_OP_THREADS": "1",
    }
    command = [sys.executable, "-m", "app.cli", "screen", "--chemsys", "Li-O", "--max-atoms", "4"]
    command += ["--sort-by", "e_above_hull", "--models", str(mp_models_dir), "--out", str(out)]
    command += ["--hull", str(hull), "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(out.open()))
    values = [float(row["e_above_hull"]) for row in table]
    assert values == sorted(values) and {"p_stable", "known", "formation_energy_mp"} <= set(table[0])
    phases = json.loads(hull.read_text())["phases"]
    assert {phase["composition"] for phase in phases} >= {"Li", "O"}


def test_ibrnet_predict_answers_e_above_hull_in_process(mp_models_dir, paper_reference, tmp_path):
    environment = {
        **os.environ,
        "IBRNET_HULL_REFERENCE": str(paper_reference),
        "IBRNET_INTRA_OP_THREADS": "1",
    }
    command = [sys.executable, "-m", "app.cli", "predict", "Li2O2", "--models", str(mp_models_dir), "--json"]
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["results"][0]["predictions"]
    stability = predictions["e_above_hull"]
    assert stability["value"] == pytest.approx(predictions["formation_energy_mp"]["value"] + 1.5, abs=1e-6)
    assert stability["decomposition"] == {"Li2O": 0.75, "O": 0.25} and stability["known"] is True
    table = subprocess.run(
        [*command[:-1], "--properties", "e_above_hull"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    # The table gives the probability beside the value, as a scientist reads a stability answer.
    assert f"p_stable {stability['p_stable']:.2f} known" in table.stdout.splitlines()[-1]


def test_the_python_client_gives_stability_columns_for_predictions_and_screens(
    mp_models_dir, paper_reference, tmp_path
):
    env = {"IBRNET_HULL_REFERENCE": str(paper_reference), "IBRNET_SCREEN_CHUNK_SIZE": "50"}
    with (
        ibrnet_serve(mp_models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, env=env) as (base, _),
        ibrnet.Client(base) as client,
    ):
        frame = client.predict(["Li2O2", "NaCl"], progress=False)
        screened = client.screen(chemsys="Li-O", max_atoms=4, sort_by="p_stable", progress=False)
    assert frame.loc[0, "p_stable"] > 0 and frame.loc[0, "known"] == True  # noqa: E712
    assert frame.loc[0, "decomposition"] == {"Li2O": 0.75, "O": 0.25}
    assert (
        pd.isna(frame.loc[1, "e_above_hull"])
        and frame.loc[1, "e_above_hull_error"]["code"] == "outside_hull_reference"
    )
    # The screen's frame names the column as its sort_by does, and p_stable ranks highest first.
    assert "e_above_hull_p_stable" not in screened.columns and screened["p_stable"].notna().all()
    assert list(screened["p_stable"]) == sorted(screened["p_stable"], reverse=True)
    assert screened["p_stable"].iloc[0] > screened["p_stable"].iloc[-1]


async def test_a_jobs_hull_is_built_once_and_not_served_after_the_job_is_gone(
    mp_models_dir, paper_reference, tmp_path
):
    """Each call rebuilt the hull (9 s of a core for a big screen; four at once took 71-81 s)."""
    settings = screen_settings(mp_models_dir, tmp_path, hull_reference=paper_reference)
    async with serve(settings) as (app, client):
        job = (await client.post("/screen", json={"chemsys": "Li-O", "max_atoms": 6})).json()
        await wait_for(client, job["id"])
        path = f"/screen/{job['id']}/hull"
        answers = await asyncio.gather(*(client.get(path) for _ in range(3)))
        kept = len(app.state.hull_answers)
        await client.delete(f"/screen/{job['id']}", params={"purge": "true"})
        gone = await client.get(path)
    assert [answer.status_code for answer in answers] == [200] * 3
    assert answers[0].json()["id"] == job["id"] and len({answer.content for answer in answers}) == 1
    assert kept == 1
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"


async def test_a_row_without_e_above_hull_passes_no_uncertainty_bound(
    mp_models_dir, paper_reference, tmp_path
):
    # NaCl lies outside the Li-O reference: no e_above_hull. The top-level bound let it through
    # (its missing uncertainty read as a point model's) where the property's own bound did not.
    settings = screen_settings(mp_models_dir, tmp_path, hull_reference=paper_reference)
    base = {"formulas": ["Li2O", "NaCl"], "properties": ["e_above_hull"]}
    kept = {}
    async with serve(settings) as (_, client):
        for name, bound in {
            "none": {},
            "top-level": {"max_uncertainty": 10.0},
            "per-property": {"filters": {"e_above_hull": {"max_uncertainty": 10.0}}},
        }.items():
            job = (await client.post("/screen", json={**base, **bound})).json()
            await wait_for(client, job["id"])
            kept[name] = [row["formula"] for row in await results_of(client, job["id"])]
    assert kept == {"none": ["Li2O", "NaCl"], "top-level": ["Li2O"], "per-property": ["Li2O"]}


async def test_a_row_without_e_above_hull_says_why_in_every_format(mp_models_dir, paper_reference, tmp_path):
    settings = screen_settings(mp_models_dir, tmp_path, hull_reference=paper_reference)
    body = {"formulas": ["Li2O", "NaCl", "Xx"], "properties": ["e_above_hull"]}
    async with serve(settings) as (_, client):
        single = (await client.post("/predict", json={"formula": "NaCl"})).json()["predictions"][
            "e_above_hull"
        ]
        batch = await client.post(
            "/predict/batch", json={"formulas": ["Li2O", "NaCl"]}, headers={"accept": "text/csv"}
        )
        job = (await client.post("/screen", json=body)).json()
        await wait_for(client, job["id"])
        rows = await results_of(client, job["id"])
        as_csv = (await client.get(f"/screen/{job['id']}/results", params={"format": "csv"})).text
        parquet = (await client.get(f"/screen/{job['id']}/results", params={"format": "parquet"})).content
    assert single["value"] is None and single["error"]["code"] == "outside_hull_reference"
    # the screen's JSON row answers as /predict does
    assert rows[1]["predictions"]["e_above_hull"]["error"] == single["error"]
    assert "error" not in rows[0]["predictions"]["e_above_hull"]
    # and every table has the code in e_above_hull_error (a refused formula has its own error)
    codes = ["", "outside_hull_reference", ""]
    assert [row["e_above_hull_error"] for row in csv.DictReader(io.StringIO(as_csv))] == codes
    assert pd.read_parquet(io.BytesIO(parquet))["e_above_hull_error"].fillna("").tolist() == codes
    assert [row["e_above_hull_error"] for row in csv.DictReader(io.StringIO(batch.text))] == codes[:2]
