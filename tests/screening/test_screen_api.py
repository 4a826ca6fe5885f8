"""POST/GET/DELETE /screen on the real app: jobs, results, formats, refusals, cancel, queueing."""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path

import httpx
import pandas as pd
import pytest

from app.screening.enumerate import ChemicalSpace
from app.screening.stoichiometry import StoichiometryEncoder
from tests.api.harness import oqmd_formulas, serve
from tests.screening.helpers import all_results, screen_settings, wait_for

pytestmark = pytest.mark.anyio


def space_keys(chemsys: str, max_atoms: int, subsystems: bool = True) -> list[str]:
    space = ChemicalSpace.from_chemsys(chemsys, max_atoms, subsystems)
    encoder = StoichiometryEncoder(space.elements, max_atoms)
    return [key for chunk in space.iter_amounts() for key in encoder.keys(chunk)]


async def batch_predictions(client: httpx.AsyncClient, formulas: list[str]) -> list[dict]:
    response = await client.post("/predict/batch", json={"formulas": formulas})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def assert_same_predictions(screened: dict, served: dict) -> None:
    assert screened["composition"] == served["composition"]
    assert screened["predictions"].keys() == served["predictions"].keys()
    for name, mine in screened["predictions"].items():
        theirs = served["predictions"][name]
        assert mine["version"] == theirs["version"] and mine["unit"] == theirs["unit"]
        assert math.isclose(mine["value"], theirs["value"], rel_tol=1e-6, abs_tol=1e-7), name
        if theirs["uncertainty"] is None:
            assert mine["uncertainty"] is None
        else:
            assert math.isclose(mine["uncertainty"], theirs["uncertainty"], rel_tol=1e-6, abs_tol=1e-7)


async def test_enumeration_job_has_every_composition_once_with_the_services_predictions(client):
    response = await client.post(
        "/screen", json={"chemsys": "Li-Fe-O", "max_atoms": 6, "include_subsystems": True}
    )
    assert response.status_code == 202, response.text
    submitted = response.json()
    # A snapshot: the runner may have taken the job before the answer was written (seen on 2 cores).
    assert submitted["status"] in ("queued", "running")
    assert response.headers["location"] == f"/screen/{submitted['id']}"
    expected = space_keys("Li-Fe-O", 6)
    assert submitted["progress"]["total"] == len(expected)
    assert submitted["progress"]["done"] in (0, len(expected))

    job = await wait_for(client, submitted["id"])
    assert job["progress"] == {"done": len(expected), "total": len(expected)}
    assert job["result_count"] == len(expected)
    rows = await all_results(client, job["id"], page=7)
    assert [row["index"] for row in rows] == list(range(len(expected)))
    assert [row["composition"] for row in rows] == expected
    served = await batch_predictions(client, [row["formula"] for row in rows])
    for mine, theirs in zip(rows, served, strict=True):
        assert_same_predictions(mine, theirs)


async def test_sorting_top_k_and_filters_select_what_the_full_table_says(client):
    everything = await client.post("/screen", json={"chemsys": "Na-Mn-O", "max_atoms": 7})
    full = await all_results(client, (await wait_for(client, everything.json()["id"]))["id"])
    body = {
        "chemsys": "Na-Mn-O",
        "max_atoms": 7,
        "properties": ["formation_enthalpy"],
        "sort_by": "formation_enthalpy",
        "ascending": False,
        "top_k": 12,
        "filters": {"band_gap": {"min": -0.5, "max": 1.0}, "volume_per_atom": {"max_uncertainty": 0.3}},
    }
    ranked = await client.post("/screen", json=body)
    assert ranked.status_code == 202, ranked.text
    rows = await all_results(client, (await wait_for(client, ranked.json()["id"]))["id"])

    def passes(row: dict) -> bool:
        gap, volume = row["predictions"]["band_gap"], row["predictions"]["volume_per_atom"]
        return -0.5 <= gap["value"] <= 1.0 and volume["uncertainty"] <= 0.3

    candidates = [row for row in full if passes(row)]
    assert len(candidates) > 12  # the filter leaves a choice, so the ranking matters
    expected = sorted(
        candidates, key=lambda r: (-r["predictions"]["formation_enthalpy"]["value"], r["index"])
    )
    assert [row["index"] for row in rows] == [row["index"] for row in expected[:12]]
    # sort_by and the filtered properties are predicted even when not listed in "properties"
    assert set(rows[0]["predictions"]) == {"formation_enthalpy", "band_gap", "volume_per_atom"}


async def test_a_formula_list_keeps_its_order_and_reports_refused_formulas(client):
    formulas = [*oqmd_formulas(40), "Xx2O", "", "Fe2O3", "He2", "Fe2O3", None]  # null: one bad row, not a 422
    response = await client.post("/screen", json={"formulas": formulas, "properties": ["band_gap"]})
    rows = await all_results(client, (await wait_for(client, response.json()["id"]))["id"])
    served = await client.post("/predict/batch", json={"formulas": formulas, "properties": ["band_gap"]})
    formulas[-1] = "null"  # echoed as its JSON text, as /predict/batch does
    assert [row["formula"] for row in rows] == formulas
    for mine, theirs in zip(rows, served.json()["results"], strict=True):
        if "error" in theirs:
            # The same words too: the job stored the null as a null, not as the formula "null".
            assert mine["error"] == theirs["error"]
        else:
            assert_same_predictions(mine, theirs)
    assert [row["error"]["code"] for row in rows if "error" in row] == [
        "unknown_element",
        "empty_formula",
        "unsupported_element",
        "invalid_formula",
    ]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
async def test_an_uploaded_file_is_screened(client, tmp_path: Path, suffix: str):
    formulas = oqmd_formulas(120, offset=500)
    frame = pd.DataFrame({"composition_text": formulas, "target": range(len(formulas))})
    path = tmp_path / f"candidates{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    response = await client.post(
        "/screen",
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
        data={"formula_column": "composition_text", "options": '{"sort_by": "band_gap", "top_k": 5}'},
    )
    assert response.status_code == 202, response.text
    assert response.json()["progress"]["total"] == 120
    rows = await all_results(client, (await wait_for(client, response.json()["id"]))["id"])
    served = await batch_predictions(client, formulas)
    best = sorted(served, key=lambda r: r["predictions"]["band_gap"]["value"])[:5]
    assert [row["formula"] for row in rows] == [row["formula"] for row in best]


async def test_results_as_csv_and_parquet_hold_the_json_rows(client):
    response = await client.post("/screen", json={"formulas": ["Fe2O3", "LiFePO4", "Qq", "NaCl"]})
    job_id = (await wait_for(client, response.json()["id"]))["id"]
    rows = await all_results(client, job_id)
    as_csv = await client.get(f"/screen/{job_id}/results", headers={"Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    as_parquet = await client.get(f"/screen/{job_id}/results", params={"format": "parquet"})
    assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
    by_accept = await client.get(
        f"/screen/{job_id}/results", headers={"Accept": "application/vnd.apache.parquet"}
    )
    assert by_accept.content == as_parquet.content
    for table in (pd.read_csv(io.StringIO(as_csv.text)), pd.read_parquet(io.BytesIO(as_parquet.content))):
        assert list(table["formula"]) == ["Fe2O3", "LiFePO4", "Qq", "NaCl"]
        assert list(table["index"]) == [0, 1, 2, 3]
        assert table.loc[2, "error_code"] == "unknown_element" and pd.isna(table.loc[2, "band_gap"])
        for position in (0, 1, 3):
            for name, prediction in rows[position]["predictions"].items():
                assert table.loc[position, name] == pytest.approx(prediction["value"], rel=1e-12)
                uncertainty = table.loc[position, f"{name}_uncertainty"]
                if prediction["uncertainty"] is None:
                    assert pd.isna(uncertainty)
                else:
                    assert uncertainty == pytest.approx(prediction["uncertainty"], rel=1e-12)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"chemsys": "Li-Xx-O"}, 422, "unknown_element"),
        ({"chemsys": "Li-He"}, 422, "unsupported_element"),
        ({"chemsys": "Li-Na-K-Rb-Cs-Fe-Co-Ni-Cu-O", "max_atoms": 40}, 413, "too_many_compositions"),
        ({"chemsys": "Li-O", "formulas": ["LiO"]}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "top_k": 3}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "max_atoms": 0}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "sort_by": "hardness"}, 422, "unknown_property"),
        ({"chemsys": "Li-O", "filters": {"band_gap": {"max_uncertainty": 0.1}}}, 422, "no_uncertainty"),
        ({"chemsys": "Li-O", "max_atoms": 1, "include_subsystems": False}, 422, "empty_screen"),
        # a mistake, not 1 or 5 atoms; a range nothing can pass; a name no property could have
        ({"chemsys": "Li-O", "max_atoms": True}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "max_atoms": "5"}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "filters": {"band_gap": {"min": 5, "max": 1}}}, 422, "invalid_request"),
        ({"chemsys": "Li-O", "sort_by": "x" * 100_000}, 422, "invalid_request"),
    ],
)
async def test_bad_screens_are_refused_before_queueing(client, body: dict, status: int, code: str):
    response = await client.post("/screen", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and len(response.content) < 10_000  # nothing huge echoed back
    if code == "too_many_compositions":
        space = ChemicalSpace.from_chemsys(body["chemsys"], body["max_atoms"])
        assert error["count"] == space.count() and error["limit"] == 10_000_000
        assert f"{space.count():,}" in error["message"]
    assert (await client.get("/screen")).json()["jobs"] == []


async def test_bad_uploads_are_refused(client):
    csv = b"name,target\nFe2O3,1\n"
    missing = await client.post("/screen", files={"file": ("x.csv", csv, "text/csv")})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_column"
    assert "'formula'" in missing.json()["error"]["message"]
    wrong_type = await client.post("/screen", files={"file": ("x.xlsx", csv, "application/octet-stream")})
    assert wrong_type.json()["error"]["code"] == "unsupported_file_type"
    no_file = await client.post("/screen", data={"options": "{}"}, files={"other": ("x.csv", csv)})
    assert no_file.json()["error"]["code"] == "missing_file"
    open_quote = b'formula\nFe2O3\n"NaCl\n' + b"LiF\n" * 998  # was a 2-row screen
    swallowed = await client.post("/screen", files={"file": ("x.csv", open_quote, "text/csv")})
    assert swallowed.status_code == 422 and swallowed.json()["error"]["code"] == "unreadable_file"
    assert swallowed.json()["error"]["row"] == 2


async def test_unknown_jobs_are_404(client):
    for response in (
        await client.get("/screen/nope"),
        await client.get("/screen/nope/results"),
        await client.delete("/screen/nope"),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    huge = await client.get("/screen/" + "a" * 50_000)  # was echoed whole: a 100 KB answer
    assert huge.status_code == 404 and huge.json()["error"]["id"] == "a" * 64 + "…"
    assert len(huge.content) < 1000


async def test_cancel_stops_a_running_job_at_once_and_keeps_its_rows(models_dir: Path, tmp_path: Path):
    # Chunks of 20 with a pause: the job runs for many seconds unless cancelled.
    settings = screen_settings(models_dir, tmp_path, screen_chunk_size=20, screen_chunk_pause_ms=20)
    async with serve(settings) as (app, client):
        response = await client.post("/screen", json={"chemsys": "Li-Fe-Mn-P-O", "max_atoms": 12})
        job_id = response.json()["id"]
        running = await wait_for(client, job_id, ("running",))
        while running["progress"]["done"] < 60:
            running = (await client.get(f"/screen/{job_id}")).json()
            await asyncio.sleep(0.02)
        cancelled = await client.delete(f"/screen/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        # The runner notices at its next commit and drops that chunk: progress stops moving.
        for _ in range(100):
            if app.state.screening.current_job is None:
                break
            await asyncio.sleep(0.02)
        assert app.state.screening.current_job is None
        job = (await client.get(f"/screen/{job_id}")).json()
        assert job["status"] == "cancelled" and job["progress"]["done"] < job["progress"]["total"]
        assert job["result_count"] == job["progress"]["done"]
        assert (await client.delete(f"/screen/{job_id}")).json()["status"] == "cancelled"

        # A finished job cannot be cancelled; the runner has gone on to the next job.
        small = await client.post("/screen", json={"formulas": ["Fe2O3"]})
        await wait_for(client, small.json()["id"])
        refused = await client.delete(f"/screen/{small.json()['id']}")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_finished"


async def test_jobs_queue_and_run_in_submission_order(client):
    ids = []
    for chemsys in ("Li-O", "Na-Cl", "K-Br", "Mg-S"):
        ids.append((await client.post("/screen", json={"chemsys": chemsys, "max_atoms": 9})).json()["id"])
    jobs = [await wait_for(client, job_id) for job_id in ids]
    starts = [job["started_at"] for job in jobs]
    assert starts == sorted(starts)
    listed = (await client.get("/screen")).json()["jobs"]
    assert [job["id"] for job in listed] == ids[::-1]


async def test_a_formula_over_the_limit_is_echoed_and_stored_as_its_first_characters(client):
    """A 25 MB formula was echoed whole by /predict/batch and stored and served whole by a screen."""
    huge = "Fe2O3" * 20_000  # 100,000 characters; the limit is 256
    formulas = ["NaCl", huge, "KBr"]
    batch = (await client.post("/predict/batch", json={"formulas": formulas})).json()["results"]
    response = await client.post("/screen", json={"formulas": formulas, "properties": ["band_gap"]})
    rows = await all_results(client, (await wait_for(client, response.json()["id"]))["id"])
    for echoed in (batch[1], rows[1]):
        assert echoed["formula"] == huge[:256] + "…"
        assert echoed["error"]["code"] == "formula_too_long"
        assert echoed["error"]["length"] == 100_000  # the real length, after the store too
    assert [row["formula"] for row in rows[::2]] == ["NaCl", "KBr"]
    assert "error" not in rows[0] and "error" not in rows[2]
