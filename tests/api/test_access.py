"""API keys: who may call, whose jobs are whose, and how much each key may queue (issue 17)."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.api.harness import make_settings, serve
from tests.screening.helpers import wait_for

pytestmark = pytest.mark.anyio

ALPHA, BETA = {"X-API-Key": "alpha-key"}, {"Authorization": "Bearer beta-key"}
PUBLIC = [
    "/health",
    "/ready",
    "/metrics",
    "/",
    "/static/page.js",
    "/vendor/plotly.min.js",
    "/docs",
    "/openapi.json",
]


def keyed(models_dir, tmp_path, **overrides):
    values = {"api_keys": "alpha-key, beta-key", "screen_chunk_size": 50, **overrides}
    return make_settings(models_dir, f"sqlite:///{tmp_path / 'keys.db'}", **values)


async def test_without_a_key_only_the_public_paths_answer(models_dir, tmp_path):
    async with serve(keyed(models_dir, tmp_path)) as (_, client):
        missing = await client.post("/predict", json={"formula": "Fe2O3"})
        wrong = await client.post("/predict", json={"formula": "Fe2O3"}, headers={"X-API-Key": "nope"})
        closed = [await client.get(path) for path in ("/models", "/limits", "/screen")]
        public = [await client.get(path) for path in PUBLIC]
        bearer = await client.post("/predict", json={"formula": "Fe2O3"}, headers=BETA)
        header = await client.post("/predict", json={"formula": "Fe2O3"}, headers=ALPHA)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert [r.status_code for r in closed] == [401, 401, 401]
    assert [r.status_code for r in public] == [200] * len(PUBLIC)
    assert bearer.status_code == header.status_code == 200


async def test_a_job_is_visible_to_and_stoppable_by_its_own_key_only(models_dir, tmp_path):
    async with serve(keyed(models_dir, tmp_path)) as (_, client):
        job = (await client.post("/screen", json={"formulas": ["Fe2O3", "NaCl"]}, headers=ALPHA)).json()
        await wait_for_with(client, job["id"], ALPHA)
        other = [
            await client.get(f"/screen/{job['id']}", headers=BETA),
            await client.get(f"/screen/{job['id']}/results", headers=BETA),
            await client.delete(f"/screen/{job['id']}", headers=BETA),
            await client.delete(f"/screen/{job['id']}", params={"purge": "true"}, headers=BETA),
        ]
        listed_for_beta = (await client.get("/screen", headers=BETA)).json()["jobs"]
        listed_for_alpha = (await client.get("/screen", headers=ALPHA)).json()["jobs"]
        own = await client.get(f"/screen/{job['id']}/results", headers=ALPHA)
    assert [r.status_code for r in other] == [404] * 4
    assert all(r.json()["error"]["code"] == "job_not_found" for r in other)
    assert listed_for_beta == [] and [j["id"] for j in listed_for_alpha] == [job["id"]]
    assert own.status_code == 200 and len(own.json()["results"]) == 2


async def wait_for_with(client, job_id: str, headers: dict) -> None:
    client.headers.update(headers)
    try:
        await wait_for(client, job_id)
    finally:
        for name in headers:
            client.headers.pop(name, None)


async def test_a_key_over_its_quota_gets_429_with_retry_after(models_dir, tmp_path):
    # Chunks of 10 and a long pause after each: however fast the runner starts on the first job,
    # at least 50 of its 60 rows are still queued when the second arrives.
    settings = keyed(
        models_dir, tmp_path, screen_max_rows_per_key=100, screen_chunk_size=10, screen_chunk_pause_ms=5000.0
    )
    async with serve(settings) as (_, client):
        too_big = await client.post("/screen", json={"chemsys": "Li-Fe-O", "max_atoms": 12}, headers=ALPHA)
        first = await client.post("/screen", json={"formulas": ["NaCl"] * 60}, headers=ALPHA)
        second = await client.post("/screen", json={"formulas": ["KBr"] * 60}, headers=ALPHA)
        other_key = await client.post("/screen", json={"formulas": ["KBr"] * 60}, headers=BETA)
    assert too_big.status_code == 429 and too_big.json()["error"]["code"] == "quota_exceeded"
    assert int(too_big.headers["retry-after"]) > 0
    assert first.status_code == 202
    assert second.status_code == 429
    assert re.search(r"the (60|50) this key has queued", second.json()["error"]["message"])
    assert other_key.status_code == 202  # one key's queue is not another's


async def test_requests_past_the_rate_get_429_with_retry_after(models_dir, tmp_path):
    async with serve(keyed(models_dir, tmp_path, api_rate_per_s=2.0)) as (_, client):
        answers = [await client.get("/limits", headers=ALPHA) for _ in range(8)]
        other = await client.get("/limits", headers=BETA)
    statuses = [answer.status_code for answer in answers]
    assert statuses[:4] == [200] * 4 and 429 in statuses  # a burst of twice the rate, then refused
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200


async def test_a_keys_file_holds_digests_only(models_dir, tmp_path):
    digest = hashlib.sha256(b"gamma-key").hexdigest()
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# the lab's keys\n{digest}  # gamma\n")
    settings = make_settings(models_dir, f"sqlite:///{tmp_path / 'k.db'}", api_keys_file=keys_file)
    async with serve(settings) as (_, client):
        good = await client.get("/limits", headers={"X-API-Key": "gamma-key"})
        plain_digest = await client.get("/limits", headers={"X-API-Key": digest})
    assert good.status_code == 200 and plain_digest.status_code == 401
