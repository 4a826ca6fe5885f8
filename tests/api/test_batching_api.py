"""Concurrent single-formula requests are merged into larger ONNX Runtime calls; /metrics proves it."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.harness import make_settings, metric_value, oqmd_formulas, serve

pytestmark = pytest.mark.anyio

CONCURRENT_REQUESTS = 200
BATCH_MAX_SIZE = 32


async def test_concurrent_requests_are_served_in_batches(models_dir, sqlite_url):
    formulas = oqmd_formulas(CONCURRENT_REQUESTS, split="train")  # distinct compositions: no cache hits
    settings = make_settings(models_dir, sqlite_url, batch_max_size=BATCH_MAX_SIZE, batch_max_wait_ms=20.0)
    async with serve(settings) as (app, client):
        model = app.state.registry.get("band_gap").name

        async def one(formula: str) -> dict:
            response = await client.post("/predict", json={"formula": formula, "properties": ["band_gap"]})
            assert response.status_code == 200, response.text
            return response.json()

        answers = await asyncio.gather(*(one(formula) for formula in formulas))
        # Each caller got its own formula's answer back out of the merged batches.
        assert [answer["formula"] for answer in answers] == formulas
        singles = {answer["formula"]: answer["predictions"]["band_gap"]["value"] for answer in answers}
        batch = (
            await client.post("/predict/batch", json={"formulas": formulas, "properties": ["band_gap"]})
        ).json()
        for item in batch["results"]:
            assert item["predictions"]["band_gap"]["value"] == pytest.approx(singles[item["formula"]])

        text = (await client.get("/metrics")).text

    submissions = metric_value(text, "ibrnet_batch_submissions_total", model=model)
    calls = metric_value(text, "ibrnet_batch_size_count", model=model)
    rows = metric_value(text, "ibrnet_batch_size_sum", model=model)
    misses = metric_value(text, "ibrnet_cache_misses_total", property="band_gap")
    # The batch call above was answered from the cache the singles filled, or computed again;
    # either way the singles' 200 rows went through the model.
    assert rows >= CONCURRENT_REQUESTS and misses >= CONCURRENT_REQUESTS
    assert submissions >= CONCURRENT_REQUESTS
    assert calls < submissions, "every request ran alone: nothing was batched"
    assert rows / calls > 1.0, f"mean achieved batch size {rows / calls:.2f}"
    # BATCH_MAX_SIZE is respected: no ORT call carried more rows.
    assert metric_value(text, "ibrnet_batch_size_bucket", model=model, le=f"{float(BATCH_MAX_SIZE)}") == calls
    # Fewer than one call per request also shows in the queue-time histogram's count.
    assert metric_value(text, "ibrnet_batch_queue_seconds_count", model=model) == submissions
