"""Predictor: parse once, cache in bulk, batch the misses; and the synchronous screening path."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import event

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.inference.batch_work import prediction_batchers
from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.predictor import ItemError, PredictionResult, Predictor, allowed_elements
from app.store.database import create_schema, make_engine
from app.store.predictions import PredictionStore
from app.store.writer import CacheWriter
from tests.api.harness import metric_value, oqmd_formulas
from tests.model_factory import reference_outputs

pytestmark = pytest.mark.anyio


async def running_predictor(registry, store=None, writer=None) -> Predictor:
    metrics = ServiceMetrics()
    cache = PredictionCache(store, writer, metrics) if store is not None else None
    batchers = prediction_batchers(registry.models, metrics, cache, max_size=128, max_wait_ms=1)
    for batcher in batchers.values():
        batcher.start()
    return Predictor(registry, store, writer, batchers, metrics, cache=cache)


async def stop(predictor: Predictor) -> None:
    for batcher in predictor.batchers.values():
        await batcher.stop()
    predictor.close()


async def test_large_batches_go_through_the_pipeline_in_order(registry, standard_models):
    formulas = oqmd_formulas(2500, split="val")  # several pipeline chunks
    formulas[7] = "Qq2"
    formulas[2100] = "He"
    predictor = await running_predictor(registry)
    try:
        results = await predictor.predict_many(formulas, ["formation_enthalpy"])
    finally:
        await stop(predictor)
    assert [r.formula for r in results] == formulas
    assert isinstance(results[7], ItemError) and results[7].error.code == "unknown_element"
    assert isinstance(results[2100], ItemError) and results[2100].error.code == "unsupported_element"
    good = [(i, r) for i, r in enumerate(results) if isinstance(r, PredictionResult)]
    assert len(good) == 2498
    features = get_featurizer("ef").transform([parse_formula(formulas[i]) for i, _ in good])
    expected = reference_outputs(standard_models[1]["formation_enthalpy"], features)[:, 0]
    values = np.array([r.predictions["formation_enthalpy"].value for _, r in good])
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)


async def test_cache_hits_skip_the_model_and_misses_are_written(registry, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    create_schema(engine)
    store = PredictionStore(engine)
    writer = CacheWriter(store)
    predictor = await running_predictor(registry, store, writer)
    try:
        first = await predictor.predict_many(["NaCl", "KCl", "ClNa"], None)
        assert await asyncio.to_thread(writer.flush, 30)
        second = await predictor.predict_many(["NaCl", "KBr"], None)
    finally:
        await stop(predictor)
        writer.close()
        engine.dispose()
    assert all(not p.cached for r in first for p in r.predictions.values())
    nacl, kbr = second
    assert all(p.cached for p in nacl.predictions.values())
    assert all(not p.cached for p in kbr.predictions.values())
    assert nacl.predictions == {name: replace(p, cached=True) for name, p in first[0].predictions.items()}
    text = predictor.metrics.render().decode()
    # NaCl and ClNa are one composition: 2 misses on the first call, 1 hit + 1 miss on the second.
    assert metric_value(text, "ibrnet_cache_misses_total", property="band_gap") == 3
    assert metric_value(text, "ibrnet_cache_hits_total", property="band_gap") == 1


async def test_concurrent_lookups_are_coalesced(registry, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    create_schema(engine)
    store = PredictionStore(engine)
    queries = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "predictions" in statement:
            queries.append(statement)

    predictor = await running_predictor(registry, store, None)
    try:
        formulas = oqmd_formulas(100, split="train", offset=500)
        await asyncio.gather(*(predictor.predict_one(f, ["band_gap"]) for f in formulas))
    finally:
        await stop(predictor)
        engine.dispose()
    assert 1 <= len(queries) < 100 / 4, f"{len(queries)} lookups for 100 concurrent requests"


def test_predict_parsed_matches_the_reference_without_cache_or_batcher(registry, standard_models):
    predictor = Predictor(registry)
    formulas = oqmd_formulas(50, split="test")
    allowed = allowed_elements(registry.models)
    parsed = [predictor.parse(text, allowed) for text in formulas]
    out = predictor.predict_parsed(parsed, ["volume_per_atom", "band_gap"])
    assert set(out) == {"volume_per_atom", "band_gap"}
    features = get_featurizer("ef").transform(parsed)
    np.testing.assert_allclose(
        out["volume_per_atom"],
        reference_outputs(standard_models[1]["volume_per_atom"], features),
        rtol=1e-5,
        atol=1e-5,
    )
    assert np.isnan(out["band_gap"][:, 1]).all()


def test_allowed_elements_is_what_every_model_accepts(registry):
    assert allowed_elements(registry.models) == get_featurizer("ef").elements
    assert allowed_elements([]) == frozenset()
