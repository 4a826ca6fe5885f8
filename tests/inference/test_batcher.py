"""DynamicBatcher and the prediction batch work, with real ORT sessions and real OQMD formulas:
merging, the size bound, splitting, failures, and one featurization per batch for every model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.chemistry.formula import parse_formula
from app.inference.batch_work import PredictionWork, predict_formulas, prediction_batchers
from app.inference.batcher import DynamicBatcher
from app.inference.metrics import ServiceMetrics
from tests.api.harness import metric_value, oqmd_formulas

pytestmark = pytest.mark.anyio


def parsed(n: int, offset: int) -> list:
    return [parse_formula(text) for text in oqmd_formulas(n, split="val", offset=offset)]


async def started(registry, **knobs) -> tuple[DynamicBatcher, ServiceMetrics]:
    """The one batcher of the test registry's models (they all read ef)."""
    metrics = ServiceMetrics()
    (batcher,) = prediction_batchers(registry.models, metrics, None, **knobs).values()
    batcher.start()
    return batcher, metrics


def calls_and_rows(metrics: ServiceMetrics, model) -> tuple[float, float]:
    text = metrics.render().decode()
    return (
        metric_value(text, "ibrnet_batch_size_count", model=model.name),
        metric_value(text, "ibrnet_batch_size_sum", model=model.name),
    )


class CountingFeaturizer:
    """The real featurizer, with each call's size recorded; ``width`` makes it return rows of the
    wrong width (what ORT must refuse)."""

    def __init__(self, featurizer, width: int | None = None) -> None:
        self.featurizer, self.width, self.calls = featurizer, width, []

    def transform(self, formulas) -> np.ndarray:
        self.calls.append(len(formulas))
        features = self.featurizer.transform(formulas)
        return features if self.width is None else features[:, : self.width]


def expected(model, formulas) -> np.ndarray:
    return model.run(model.featurizer.transform(formulas))[:, 0]


async def test_concurrent_submissions_share_one_call_and_get_their_own_rows(registry):
    model = registry.get("volume_per_atom")
    batcher, metrics = await started(registry, max_size=1024, max_wait_ms=200)
    try:
        blocks = [parsed(n, 40 * seed) for seed, n in enumerate((1, 3, 1, 7, 2, 1))]
        answers = await asyncio.gather(*(predict_formulas(batcher, block, (model,)) for block in blocks))
    finally:
        await batcher.stop()
    for block, answer in zip(blocks, answers, strict=True):
        values = [p.value for p in answer[model.property]]
        np.testing.assert_allclose(values, expected(model, block), rtol=1e-6)
    # All six arrived within the wait window: one ORT call carried all 15 rows.
    assert calls_and_rows(metrics, model) == (1, 15)


async def test_every_model_of_a_feature_set_shares_one_featurization(registry, monkeypatch):
    """The three models read the same features: a batch featurizes each new formula once, not three
    times, and each model still answers exactly what it computes alone (issue 18, item 5)."""
    models = tuple(registry.models)
    assert len({m.featurizer.name for m in models}) == 1 and len(models) == 3
    batcher, metrics = await started(registry, max_size=1024, max_wait_ms=100)
    counting = CountingFeaturizer(batcher.process.featurizer)
    monkeypatch.setattr(batcher.process, "featurizer", counting)
    calls = counting.calls
    try:
        first, second = parsed(20, 0), parsed(20, 10)  # 10 formulas in common
        answers = await asyncio.gather(
            predict_formulas(batcher, first, models), predict_formulas(batcher, second, models[:1])
        )
    finally:
        await batcher.stop()
    assert calls == [30]  # 30 distinct compositions, featurized together once for three models
    for block, answer, asked in zip((first, second), answers, (models, models[:1]), strict=True):
        assert set(answer) == {m.property for m in asked}
        for model in asked:
            np.testing.assert_allclose(
                [p.value for p in answer[model.property]], expected(model, block), rtol=1e-6
            )
    for model in models:
        assert calls_and_rows(metrics, model) == (1, 30 if model is models[0] else 20)


async def test_max_size_bounds_every_call_and_never_splits_a_submission(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(registry, max_size=8, max_wait_ms=50)
    try:
        blocks = [parsed(3, 3 * seed) for seed in range(10)]
        answers = await asyncio.gather(*(predict_formulas(batcher, block, (model,)) for block in blocks))
    finally:
        await batcher.stop()
    for block, answer in zip(blocks, answers, strict=True):
        np.testing.assert_allclose(
            [p.value for p in answer[model.property]], expected(model, block), rtol=1e-6
        )
    text = metrics.render().decode()
    calls, total = calls_and_rows(metrics, model)
    assert total == 30
    assert metric_value(text, "ibrnet_batch_size_bucket", model=model.name, le="8.0") == calls
    # 3-row blocks under an 8-row bound: at most two blocks (6 rows) per call, so at least 5 calls.
    assert calls >= 5
    assert metric_value(text, "ibrnet_batch_size_bucket", model=model.name, le="4.0") < calls


async def test_a_block_larger_than_max_size_is_split(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(registry, max_size=16, max_wait_ms=0)
    try:
        block = parsed(50, 0)
        answer = await predict_formulas(batcher, block, (model,))
    finally:
        await batcher.stop()
    np.testing.assert_allclose([p.value for p in answer[model.property]], expected(model, block), rtol=1e-6)
    assert calls_and_rows(metrics, model) == (4, 50)  # 16 + 16 + 16 + 2


async def test_a_failing_batch_fails_its_callers_and_the_batcher_carries_on(registry):
    model = registry.get("band_gap")
    metrics = ServiceMetrics()
    work = PredictionWork(model.featurizer, metrics, None)
    broken = {"on": True}

    def process(batch):
        if broken["on"]:
            broken["on"] = False
            raise RuntimeError("the model's session failed")
        return work(batch)

    batcher = DynamicBatcher("ef", process, max_size=64, max_wait_ms=0)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="session failed"):
            await predict_formulas(batcher, parsed(2, 0), (model,))
        good = parsed(2, 5)
        answer = await predict_formulas(batcher, good, (model,))
    finally:
        await batcher.stop()
    np.testing.assert_allclose([p.value for p in answer[model.property]], expected(model, good), rtol=1e-6)


async def test_an_ort_failure_is_counted_for_its_model(registry, monkeypatch):
    model = registry.get("band_gap")
    batcher, metrics = await started(registry, max_size=64, max_wait_ms=0)
    monkeypatch.setattr(batcher.process, "featurizer", CountingFeaturizer(model.featurizer, width=40))
    try:
        with pytest.raises(Exception, match=r"(?i)dimension|shape|invalid"):
            await predict_formulas(batcher, parsed(2, 0), (model,))  # wrong width: ORT refuses
    finally:
        await batcher.stop()
    assert metric_value(metrics.render().decode(), "ibrnet_inference_failures_total", model=model.name) == 1


async def test_empty_submission_needs_no_call(registry):
    model = registry.get("band_gap")
    batcher, metrics = await started(registry, max_size=8, max_wait_ms=0)
    try:
        assert await predict_formulas(batcher, [], (model,)) == {model.property: []}
    finally:
        await batcher.stop()
    assert calls_and_rows(metrics, model) == (0, 0)


async def test_a_failing_model_fails_its_own_callers_only(registry, monkeypatch):
    """One batcher serves every model of a feature set: a model that fails must not take down the
    requests in the same batch that did not ask for it."""
    good, bad = registry.get("band_gap"), registry.get("formation_enthalpy")
    batcher, metrics = await started(registry, max_size=1024, max_wait_ms=100)

    def broken(features):
        raise RuntimeError("the formation-enthalpy session failed")

    monkeypatch.setattr(bad, "run", broken)
    try:
        formulas = parsed(5, 0)
        answers = await asyncio.gather(
            predict_formulas(batcher, formulas, (good,)),
            predict_formulas(batcher, formulas, (good, bad)),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()
    assert isinstance(answers[1], RuntimeError) and "formation-enthalpy" in str(answers[1])
    np.testing.assert_allclose(
        [p.value for p in answers[0][good.property]], expected(good, formulas), rtol=1e-6
    )
    assert calls_and_rows(metrics, good) == (1, 5)  # both requests shared the batch
    text = metrics.render().decode()
    assert metric_value(text, "ibrnet_inference_failures_total", model=bad.name) == 1
