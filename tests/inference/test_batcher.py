"""DynamicBatcher with a real ORT session: merging, the size bound, splitting, failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.inference.batcher import DynamicBatcher
from app.inference.metrics import ServiceMetrics
from tests.api.harness import metric_value

pytestmark = pytest.mark.anyio


def rows(n: int, seed: int) -> np.ndarray:
    features = np.random.default_rng(seed).random((n, 86), dtype=np.float32)
    return features / features.sum(axis=1, keepdims=True)


async def started(model, **knobs) -> tuple[DynamicBatcher, ServiceMetrics]:
    metrics = ServiceMetrics()
    batcher = DynamicBatcher(model, metrics=metrics, **knobs)
    batcher.start()
    return batcher, metrics


def calls_and_rows(metrics: ServiceMetrics, model) -> tuple[float, float]:
    text = metrics.render().decode()
    return (
        metric_value(text, "ibrnet_batch_size_count", model=model.name),
        metric_value(text, "ibrnet_batch_size_sum", model=model.name),
    )


async def test_concurrent_submissions_share_one_call_and_get_their_own_rows(registry):
    model = registry.get("volume_per_atom")
    batcher, metrics = await started(model, max_size=1024, max_wait_ms=200)
    try:
        blocks = [rows(n, seed) for seed, n in enumerate((1, 3, 1, 7, 2, 1))]
        answers = await asyncio.gather(*(batcher.submit(block) for block in blocks))
    finally:
        await batcher.stop()
    for block, answer in zip(blocks, answers, strict=True):
        np.testing.assert_allclose(answer, model.run(block), rtol=1e-6)
    # All six arrived within the wait window: one ORT call carried all 15 rows.
    assert calls_and_rows(metrics, model) == (1, 15)


async def test_max_size_bounds_every_call_and_never_splits_a_submission(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(model, max_size=8, max_wait_ms=50)
    try:
        blocks = [rows(3, seed) for seed in range(10)]
        answers = await asyncio.gather(*(batcher.submit(block) for block in blocks))
    finally:
        await batcher.stop()
    for block, answer in zip(blocks, answers, strict=True):
        np.testing.assert_allclose(answer, model.run(block), rtol=1e-6)
    text = metrics.render().decode()
    calls, total = calls_and_rows(metrics, model)
    assert total == 30
    assert metric_value(text, "ibrnet_batch_size_bucket", model=model.name, le="8.0") == calls
    # 3-row blocks under an 8-row bound: at most two blocks (6 rows) per call, so at least 5 calls.
    assert calls >= 5
    assert metric_value(text, "ibrnet_batch_size_bucket", model=model.name, le="4.0") < calls


async def test_a_block_larger_than_max_size_is_split(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(model, max_size=16, max_wait_ms=0)
    try:
        block = rows(50, 1)
        answer = await batcher.submit(block)
    finally:
        await batcher.stop()
    np.testing.assert_allclose(answer, model.run(block), rtol=1e-6)
    assert calls_and_rows(metrics, model) == (4, 50)  # 16 + 16 + 16 + 2


async def test_a_failing_call_fails_its_callers_and_the_batcher_carries_on(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(model, max_size=64, max_wait_ms=0)
    try:
        with pytest.raises(Exception, match=r"(?i)dimension|shape|invalid"):
            await batcher.submit(np.zeros((2, 40), dtype=np.float32))  # wrong width: ORT refuses
        good = rows(2, 3)
        np.testing.assert_allclose(await batcher.submit(good), model.run(good), rtol=1e-6)
    finally:
        await batcher.stop()
    assert metric_value(metrics.render().decode(), "ibrnet_inference_failures_total", model=model.name) == 1


async def test_empty_submission_needs_no_call(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(model, max_size=8, max_wait_ms=0)
    try:
        assert (await batcher.submit(np.empty((0, 86), np.float32))).shape == (0, 2)
    finally:
        await batcher.stop()
    assert calls_and_rows(metrics, model) == (0, 0)
