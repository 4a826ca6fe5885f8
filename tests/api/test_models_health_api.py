"""GET /models, /health, /ready, /metrics and the offline docs."""

from __future__ import annotations

import re
import shutil
import socket

import pytest

from app.inference.manifest import ONNX_FILE, ModelManifest, file_sha256
from tests.api.harness import make_settings, metric_value, serve
from tests.model_factory import STANDARD_MODELS, write_model
from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.anyio


async def test_models_lists_manifest_version_and_provider(client, models_dir):
    body = (await client.get("/models")).json()
    assert body["skipped"] == {}
    by_property = {model["property"]: model for model in body["models"]}
    assert sorted(by_property) == sorted(str(spec["property_name"]) for spec in STANDARD_MODELS)
    for spec in STANDARD_MODELS:
        folder = models_dir / str(spec["name"])
        listed = by_property[str(spec["property_name"])]
        manifest = ModelManifest.load(folder)
        assert listed["version"] == file_sha256(folder / ONNX_FILE)[:12]
        assert listed["provider"] == "CPUExecutionProvider"
        assert listed["variant"] == "fp32"
        # The whole manifest is there, as written.
        for key, value in manifest.model_dump(mode="json").items():
            assert listed[key] == value


async def test_health_is_alive(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_every_get_route_answers_head_with_get_s_status_and_headers(client):
    # `curl -I /models` was a 405, and HEAD /screen a 405 saying "allow: POST".
    for path in ("/health", "/ready", "/models", "/limits", "/screen", "/", "/openapi.json", "/metrics"):
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers and path != "/metrics":  # metrics move between the calls
            assert head.headers["content-length"] == got.headers["content-length"], path
    missing = await client.head("/screen/nope")
    assert missing.status_code == 404 and missing.content == b""
    assert (await client.head("/predict")).status_code == 405  # POST only: no GET to mirror


def test_head_through_a_real_server_sends_no_body(models_dir, tmp_path):
    with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'cache.db'}", tmp_path) as (base, _):
        answer = raw_request(base, b"HEAD /models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head.lower() and body == b""


def raw_request(base: str, request: bytes) -> bytes:
    """Everything the server sends back before it closes the connection."""
    answer = b""
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


async def test_ready_when_models_and_database_answer(client):
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["database"] == "ok"
    assert body["reasons"] == []
    assert sorted(body["models"]) == sorted(str(spec["property_name"]) for spec in STANDARD_MODELS)


async def test_a_broken_model_is_skipped_and_reported(tmp_path, models_dir, sqlite_url):
    mixed = tmp_path / "models"
    shutil.copytree(models_dir / "oqmd-band-gap", mixed / "oqmd-band-gap")
    write_model(mixed / "tampered", property_name="formation_enthalpy", unit="eV/atom", seed=9)
    (mixed / "tampered" / ONNX_FILE).write_bytes((mixed / "tampered" / ONNX_FILE).read_bytes() + b"\0")
    async with serve(make_settings(mixed, sqlite_url)) as (_, client):
        ready = (await client.get("/ready")).json()
        assert ready["status"] == "ready"  # the other model serves
        assert ready["models"] == ["band_gap"]
        assert any("tampered" in reason and "sha256" in reason for reason in ready["reasons"])
        skipped = (await client.get("/models")).json()["skipped"]
        assert list(skipped) == [str(mixed / "tampered")]
        assert (await client.post("/predict", json={"formula": "NaCl"})).json()["predictions"].keys() == {
            "band_gap"
        }
        error = (
            await client.post("/predict", json={"formula": "NaCl", "properties": ["formation_enthalpy"]})
        ).json()
        assert error["error"]["code"] == "unknown_property"


async def test_no_models_means_unavailable(tmp_path, sqlite_url):
    async with serve(make_settings(tmp_path / "empty", sqlite_url)) as (_, client):
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        refused = await client.post("/predict", json={"formula": "NaCl"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "no_models"


async def test_metrics_exports_batching_cache_and_request_series(client):
    await client.post("/predict/batch", json={"formulas": ["NaCl", "KCl", "Xx"]})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "ibrnet_batch_size_bucket",
        "ibrnet_batch_queue_seconds_bucket",
        "ibrnet_inference_seconds_bucket",
        "ibrnet_batch_submissions_total",
        "ibrnet_cache_misses_total",
        "ibrnet_http_requests_total",
        "ibrnet_http_request_duration_seconds_bucket",
        "ibrnet_formula_errors_total",
        "ibrnet_cache_write_pending",
        "ibrnet_models_loaded 3.0",
    ):
        assert name in text, name
    assert metric_value(text, "ibrnet_cache_misses_total", property="band_gap") == 2
    assert (
        metric_value(text, "ibrnet_http_requests_total", method="POST", route="/predict/batch", status="200")
        == 1
    )


async def test_docs_work_offline(client):
    page = await client.get("/docs")
    assert page.status_code == 200
    html = page.text
    # Every script and stylesheet comes from this service, none from a CDN.
    sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert sources, html
    assert not [source for source in sources if "://" in source], sources
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html):
        served = await client.get(asset)
        assert served.status_code == 200 and len(served.content) > 100, asset
    assert '"validatorUrl": null' in html  # no schema upload to validator.swagger.io either
    schema = (await client.get("/openapi.json")).json()
    assert {"/predict", "/predict/batch", "/models", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["formulas"]
    assert "MAX_BATCH_ITEMS" in body["properties"]["formulas"]["description"]
    single = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert single["required"] == ["formula"]
