"""The CacheWriter: background writes, a submit that never waits, a bounded queue, self-recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.store.database import make_engine
from app.store.predictions import CachedPrediction, PredictionStore
from app.store.writer import CacheWriter
from tests.tcp_proxy import TcpProxy

from .conftest import wait_until
from .test_predictions import predictions_for

# Short back-off so recovery tests finish quickly; the production defaults are longer.
FAST_RETRY = {"initial_backoff_s": 0.01, "max_backoff_s": 0.2}


class GatedStore(PredictionStore):
    """A real store whose writes wait at a gate the test opens: the database looks slow."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def save(self, model_version: str, rows: Mapping[str, CachedPrediction]) -> int:
        self.entered.set()
        self.gate.wait()
        return super().save(model_version, rows)


@pytest.fixture
def gated(engine: Engine) -> Iterator[GatedStore]:
    store = GatedStore(engine)
    yield store
    store.gate.set()  # never leave the writer thread stuck


def test_rows_are_written_in_the_background(store: PredictionStore, formulas: list[str]) -> None:
    writer = CacheWriter(store, chunk_rows=700)
    ef, pa = predictions_for(formulas[:2000]), predictions_for(formulas[:1000], offset=5.0)
    writer.submit("ef-v1", ef)
    writer.submit("pa-v1", pa)
    assert writer.flush(timeout=60)
    assert writer.pending == 0 and writer.written == 3000 and writer.dropped == 0
    assert store.lookup("ef-v1", formulas[:2000]) == ef
    assert store.lookup("pa-v1", formulas[:1000]) == pa
    writer.close()


def test_submit_never_waits_for_the_database(gated: GatedStore, formulas: list[str]) -> None:
    writer = CacheWriter(gated, chunk_rows=100)
    writer.submit("v1", predictions_for(formulas[:100]))
    assert gated.entered.wait(60)  # the writer thread is now stuck inside save()

    def submit_nine_more_batches() -> None:
        for start in range(100, 1000, 100):
            writer.submit("v1", predictions_for(formulas[start : start + 100]))

    # If submit waited on the write in progress it would never return: the gate stays shut.
    submitter = threading.Thread(target=submit_nine_more_batches)
    submitter.start()
    submitter.join(60)
    assert not submitter.is_alive(), "submit() blocked while the database was busy"
    assert writer.pending == 1000

    gated.gate.set()
    assert writer.flush(timeout=60)
    assert len(gated.lookup("v1", formulas[:1000])) == 1000
    writer.close()


def test_a_full_queue_drops_the_oldest_rows_and_counts_them(gated: GatedStore, formulas: list[str]) -> None:
    writer = CacheWriter(gated, chunk_rows=100, max_pending_rows=500)
    writer.submit("v1", predictions_for(formulas[:100]))  # taken by the writer, stuck at the gate
    assert gated.entered.wait(60)
    for start in range(100, 900, 100):  # 800 more rows; 400 fit next to the 100 in flight
        writer.submit("v1", predictions_for(formulas[start : start + 100]))
    assert writer.pending == 500
    assert writer.dropped == 400

    gated.gate.set()
    assert writer.flush(timeout=60)
    cached = gated.lookup("v1", formulas[:900])
    assert set(cached) == set(formulas[:100]) | set(formulas[500:900])  # the oldest queued went first
    writer.close()


def test_writes_wait_out_an_outage_and_resume_by_themselves(tmp_path: Path, formulas: list[str]) -> None:
    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a missing folder
    engine = make_engine(f"sqlite:///{folder / 'cache.db'}")
    store = PredictionStore(engine)
    writer = CacheWriter(store, **FAST_RETRY)
    rows = predictions_for(formulas[:1000])
    writer.submit("v1", rows)

    wait_until(lambda: writer.failures >= 3, "three failed write attempts")
    assert writer.last_error is not None and "unable to open database file" in writer.last_error
    assert writer.pending == 1000 and writer.dropped == 0  # kept, not lost
    assert not writer.flush(timeout=0.05)

    folder.mkdir()  # the database is back
    assert writer.flush(timeout=60)
    assert writer.last_error is None and writer.failures == 0
    assert store.lookup("v1", formulas[:1000]) == rows
    writer.close()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_outage_keeps_the_rows_until_the_network_is_back(
    postgres_schema_url: str, formulas: list[str]
) -> None:
    proxy = TcpProxy(postgres_schema_url)
    proxy.start()
    engine = make_engine(proxy.url)
    store = PredictionStore(engine)
    writer = CacheWriter(store, **FAST_RETRY)
    try:
        first, second = predictions_for(formulas[:500]), predictions_for(formulas[500:1000])
        writer.submit("v1", first)
        assert writer.flush(timeout=60)

        proxy.stop()
        writer.submit("v1", second)
        wait_until(lambda: writer.failures >= 3, "three failed write attempts")
        assert writer.pending == 500 and writer.last_error is not None

        proxy.start()
        assert writer.flush(timeout=60)
        assert writer.last_error is None
        assert store.lookup("v1", formulas[:1000]) == first | second
    finally:
        writer.close()
        engine.dispose()
        proxy.stop()


def test_close_writes_what_is_queued(store: PredictionStore, formulas: list[str]) -> None:
    writer = CacheWriter(store, chunk_rows=250)
    rows = predictions_for(formulas[:1000])
    writer.submit("v1", rows)
    writer.close(timeout=60)
    assert store.lookup("v1", formulas[:1000]) == rows
    writer.submit("v1", predictions_for(formulas[1000:1010]))  # after close: counted, not written
    assert writer.dropped == 10


def test_close_gives_up_on_a_dead_database(tmp_path: Path, formulas: list[str]) -> None:
    store = PredictionStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'cache.db'}"))
    writer = CacheWriter(store, **FAST_RETRY)
    writer.submit("v1", predictions_for(formulas[:100]))
    writer.close(timeout=0.2)
    assert writer.pending == 0 and writer.dropped == 100 and writer.written == 0


def test_past_max_rows_the_oldest_rows_are_deleted(store: PredictionStore, formulas: list[str]) -> None:
    # Distinct formulas never run out: one client sending them grew the cache 48 MB in 20 s.
    writer = CacheWriter(store, max_rows=300)
    old, new = predictions_for(formulas[:200]), predictions_for(formulas[200:400], offset=1.0)
    writer.submit("v1", old)
    assert writer.flush(timeout=60) and store.count() == 200 and writer.evicted == 0
    time.sleep(1.1)  # created_at: SQLite's CURRENT_TIMESTAMP counts whole seconds
    writer.submit("v1", new)
    assert writer.flush(timeout=60)
    assert store.count() == 270 and writer.evicted == 130  # down to 90% of the bound, oldest first
    assert store.lookup("v1", formulas[200:400]) == new
    assert len(store.lookup("v1", formulas[:200])) == 70
    writer.submit("v1", new)  # already there: nothing new, nothing deleted
    assert writer.flush(timeout=60) and store.count() == 270 and writer.evicted == 130
    writer.close()


def test_save_says_how_many_rows_were_new(store: PredictionStore, formulas: list[str]) -> None:
    assert store.save("v1", predictions_for(formulas[:50])) == 50
    assert store.save("v1", predictions_for(formulas[25:75])) == 25
    assert store.drop_oldest(10) == 10 and store.count() == 65
