"""The in-memory layer in front of the SQL prediction cache: bounded, least recently used first."""

from __future__ import annotations

import pytest

from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.recent import RecentPredictions
from app.store.database import create_schema, make_engine
from app.store.predictions import CachedPrediction, PredictionStore


def row(value: float) -> CachedPrediction:
    return CachedPrediction(value, None)


def test_the_least_recently_used_rows_are_forgotten_first():
    recent = RecentPredictions(3)
    recent.put_many("v1", {"NaCl": row(1.0), "KCl": row(2.0), "MgO": row(3.0)})
    assert recent.get("v1", "NaCl") == row(1.0)  # NaCl is now the most recently used
    recent.put_many("v1", {"CaO": row(4.0)})
    assert len(recent) == 3
    assert recent.get("v1", "KCl") is None  # the least recently used went
    assert recent.get_many("v1", ["NaCl", "KCl", "MgO", "CaO"]) == {
        "NaCl": row(1.0),
        "MgO": row(3.0),
        "CaO": row(4.0),
    }


def test_a_model_version_never_sees_another_versions_rows():
    recent = RecentPredictions(10)
    recent.put_many("old", {"GaAs": row(1.4)})
    assert recent.get("new", "GaAs") is None
    assert recent.get_many("new", ["GaAs"]) == {}
    recent.put_many("new", {"GaAs": row(1.5)})
    assert recent.get("old", "GaAs") == row(1.4)
    assert recent.get("new", "GaAs") == row(1.5)


def test_zero_rows_keeps_nothing():
    recent = RecentPredictions(0)
    recent.put_many("v1", {"NaCl": row(1.0)})
    assert len(recent) == 0
    assert recent.get("v1", "NaCl") is None
    with pytest.raises(ValueError):
        RecentPredictions(-1)


def test_the_cache_remembers_what_it_saves_but_no_non_finite_value(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    create_schema(engine)
    store = PredictionStore(engine)
    cache = PredictionCache(store, None, ServiceMetrics(), recent=RecentPredictions(10))
    try:
        cache.save("v1", {"NaCl": row(1.5), "Xe": row(float("nan"))})
        assert cache.recall("v1", "NaCl") == row(1.5)
        assert cache.recall("v1", "Xe") is None  # recomputed when asked again, as the database would
        assert cache.lookup("v1", ["NaCl", "Xe", "KCl"]) == {"NaCl": row(1.5)}
        assert cache.recall("v2", "NaCl") is None
    finally:
        cache.close()
        engine.dispose()
