"""Client.screen, ScreenJob and Client.models against a real ``ibrnet serve``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

import ibrnet
from ibrnet.frames import models_frame
from tests.client.helpers import assert_same_frame

SCREEN_COLUMNS = [
    "index",
    "formula",
    "composition",
    "formation_enthalpy",
    "formation_enthalpy_uncertainty",
    "error_code",
    "error_message",
]


def test_screen_waits_and_returns_the_ranked_rows_with_the_services_predictions(
    client, models_dir: Path, capsys
):
    everything = client.screen(
        chemsys="Li-O", max_atoms=4, properties=["formation_enthalpy"], progress=True, poll_interval=0.2
    )
    assert "7/7" in capsys.readouterr().err  # the bar follows the job's progress
    assert list(everything.columns) == SCREEN_COLUMNS
    assert everything["index"].tolist() == list(range(len(everything))) and len(everything) == 7
    assert set(everything["composition"]) >= {"Li2O", "LiO", "Li", "O"}

    top = client.screen(
        chemsys="Li-O",
        max_atoms=4,
        properties=["formation_enthalpy"],
        sort_by="formation_enthalpy",
        top_k=3,
        progress=False,
        poll_interval=0.2,
    )
    assert list(top.columns) == SCREEN_COLUMNS
    best = everything.nsmallest(3, "formation_enthalpy")
    assert top["index"].tolist() == best["index"].tolist()
    assert top["formation_enthalpy"].is_monotonic_increasing
    # Screening computes on its own path (no cache, no batcher): the same numbers as predict.
    predicted = ibrnet.predict(top["formula"], properties=["formation_enthalpy"], models_dir=models_dir)
    assert_same_frame(top.drop(columns="index"), predicted)


def test_a_job_handle_reports_progress_and_can_be_cancelled_keeping_its_rows(client, server):
    job = client.screen(chemsys="Li-Fe-Mn-P-O", max_atoms=14, wait=False)
    assert isinstance(job, ibrnet.ScreenJob) and job.properties == [
        "band_gap",
        "formation_enthalpy",
        "volume_per_atom",
    ]
    deadline = time.monotonic() + 20
    status = job.status()
    while status["status"] != "running" or status["progress"]["done"] < 100:
        assert status["status"] in ("queued", "running"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)
        status = job.status()
    total = status["progress"]["total"]

    assert job.cancel()["status"] == "cancelled"
    with pytest.raises(ibrnet.ServiceError) as cancelled:
        job.wait(progress=False)
    assert cancelled.value.code == "job_cancelled"

    # Another handle on the same job (a new notebook session) sees the same rows.
    again = client.job(job.id)
    ended = again.status()
    assert ended["status"] == "cancelled" and ended["progress"]["done"] < total
    rows = again.results()
    assert 100 <= len(rows) == ended["result_count"] < total
    assert rows["index"].tolist() == list(range(len(rows)))
    assert rows["error_code"].isna().all() and rows["volume_per_atom_uncertainty"].notna().all()
    # Cancelling a job that has ended otherwise is refused by the service.
    finished = client.screen(formulas=["Fe2O3"], wait=False)
    finished.wait(progress=False, poll_interval=0.1)
    with pytest.raises(ibrnet.ServiceError) as refused:
        finished.cancel()
    assert (refused.value.status, refused.value.code) == (409, "job_finished")


def test_a_refused_screen_raises_service_error(client):
    with pytest.raises(ibrnet.ServiceError) as refused:
        client.screen(chemsys="Li-Xx", progress=False)
    assert refused.value.status == 422
    with pytest.raises(ValueError, match="exactly one"):
        client.screen(chemsys="Li-O", formulas=["Li2O"])


def test_models_has_one_row_per_served_model_with_its_version_and_figures(client, server, models_dir: Path):
    frame = client.models()
    served = httpx.get(f"{server}/models", timeout=10).json()["models"]
    assert len(frame) == len(served) == 3
    assert frame["property"].tolist() == [model["property"] for model in served]
    manifests = {
        manifest["property"]: manifest
        for manifest in (json.loads(path.read_text()) for path in models_dir.glob("*/model.json"))
    }
    for row in frame.itertuples():
        manifest = manifests[row.property]
        assert row.version == manifest["onnx_sha256"][:12]
        assert (row.name, row.unit, row.parameters) == (
            manifest["name"],
            manifest["unit"],
            manifest["architecture"]["parameters"],
        )
        assert row.test_mae == manifest["metrics"]["test"]["mae"] and row.provider == "CPUExecutionProvider"
    assert frame.set_index("property")["output"].to_dict() == {
        "band_gap": "point",
        "formation_enthalpy": "point",
        "volume_per_atom": "ensemble",
    }
    assert frame.attrs["skipped"] == {}
    assert client.limits()["max_batch_items"] == 40
    assert client.health() == {"status": "ok"} and client.ready()["status"] == "ready"


def test_models_frame_shows_the_calibration_of_the_shipped_ensembles():
    shipped = Path(__file__).resolve().parents[2] / "models"
    manifests = [json.loads(path.read_text()) for path in sorted(shipped.glob("*/model.json"))]
    frame = models_frame([{**m, "version": m["onnx_sha256"][:12], "provider": "CPU"} for m in manifests])
    assert len(frame) == len(manifests) >= 1
    ensembles = frame[frame["output"] == "ensemble"]
    assert len(ensembles) >= 1, "the shipped models include ensembles (formation enthalpy, volume)"
    for column in ("test_within_1_sigma", "test_within_2_sigma", "sigma_scale"):
        assert ensembles[column].notna().all(), column
    assert frame[frame["output"] == "point"]["test_within_1_sigma"].isna().all()
    assert (frame["parameters"] > 1000).all() and frame["test_n"].gt(0).all()
