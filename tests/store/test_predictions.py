"""The prediction cache on SQLite and PostgreSQL: round trips, versions, bulk statements, outages."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, make_url

from app.store.database import StoreUnavailable, make_engine
from app.store.predictions import SQLITE_MAX_VARIABLES, CachedPrediction, PredictionStore
from tests.tcp_proxy import TcpProxy, free_port


def predictions_for(keys: list[str], offset: float = 0.0) -> dict[str, CachedPrediction]:
    """Values with full float64 precision; every third row has no uncertainty (a point model)."""
    return {
        key: CachedPrediction(value=offset + index / 7.0, uncertainty=None if index % 3 == 0 else index / 1e4)
        for index, key in enumerate(keys)
    }


def test_saved_rows_come_back_exactly(store: PredictionStore, formulas: list[str]) -> None:
    rows = predictions_for(formulas[:500])
    store.save("v1", rows)
    assert store.lookup("v1", formulas[:600]) == rows  # the 100 unsaved keys are simply absent


def test_a_new_model_version_never_serves_the_old_versions_values(
    store: PredictionStore, formulas: list[str]
) -> None:
    keys = formulas[:200]
    old, new = predictions_for(keys), predictions_for(keys, offset=100.0)
    store.save("old-version", old)
    assert store.lookup("new-version", keys) == {}
    store.save("new-version", new)
    assert store.lookup("new-version", keys) == new
    assert store.lookup("old-version", keys) == old


def test_saving_rows_that_exist_is_tolerated_and_keeps_the_first_value(
    store: PredictionStore, formulas: list[str]
) -> None:
    first = predictions_for(formulas[:100])
    store.save("v1", first)
    second = predictions_for(formulas[50:150], offset=-1.0)  # half already cached, half new
    store.save("v1", second)
    found = store.lookup("v1", formulas[:150])
    assert found == first | {key: second[key] for key in formulas[100:150]}


def test_non_finite_numbers_are_not_cached(store: PredictionStore, formulas: list[str]) -> None:
    a, b, c, d = formulas[:4]
    store.save(
        "v1",
        {
            a: CachedPrediction(math.nan, 0.1),
            b: CachedPrediction(math.inf, None),
            c: CachedPrediction(-1.5, math.nan),  # a point model reports NaN spread: stored as NULL
            d: CachedPrediction(2.5, 0.25),
        },
    )
    assert store.lookup("v1", [a, b, c, d]) == {
        c: CachedPrediction(-1.5, None),
        d: CachedPrediction(2.5, 0.25),
    }


def test_empty_and_repeated_inputs(store: PredictionStore, formulas: list[str]) -> None:
    assert store.lookup("v1", []) == {}
    store.save("v1", {})
    store.save("v1", predictions_for(formulas[:3]))
    assert list(store.lookup("v1", [formulas[0]] * 5)) == [formulas[0]]


class StatementLog:
    """Every statement the engine sends to the database, with its parameter count."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[tuple[str, int]] = []
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: object, _cursor: object, statement: str, parameters: object, *_: object) -> None:
        count = len(parameters) if isinstance(parameters, list | tuple | dict) else 0
        self.statements.append((statement.lstrip().split(None, 1)[0].upper(), count))

    def of_kind(self, kind: str) -> list[tuple[str, int]]:
        return [entry for entry in self.statements if entry[0] == kind]

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)


@pytest.fixture
def statement_log(engine: Engine) -> Iterator[StatementLog]:
    log = StatementLog(engine)
    yield log
    log.close()


@pytest.mark.parametrize("chunk", [1000, None])
def test_bulk_operations_send_one_statement_per_chunk(
    store: PredictionStore, statement_log: StatementLog, formulas: list[str], chunk: int | None
) -> None:
    """3,000 keys: ceil(3000 / chunk) INSERTs and SELECTs, never one per formula."""
    if chunk is not None:
        store.lookup_chunk_size = store.insert_chunk_size = chunk
    assert store.ping()  # the schema is created before counting
    statement_log.statements.clear()

    store.save("v1", predictions_for(formulas))
    assert len(store.lookup("v1", formulas)) == len(formulas)

    # PostgreSQL's insert is "WITH inserted AS (INSERT ...) SELECT count(*)": it says how many were new
    inserts = statement_log.of_kind("INSERT") + statement_log.of_kind("WITH")
    selects = statement_log.of_kind("SELECT")
    assert len(inserts) == math.ceil(len(formulas) / store.insert_chunk_size)
    assert len(selects) == math.ceil(len(formulas) / store.lookup_chunk_size)
    if store.engine.dialect.name == "sqlite":
        assert all(count <= SQLITE_MAX_VARIABLES for _, count in inserts + selects)


# --- outages -------------------------------------------------------------------------------------


def test_sqlite_that_cannot_open_its_file_is_unavailable_until_it_can(
    tmp_path: Path, formulas: list[str]
) -> None:
    folder = tmp_path / "not-yet"  # the file's folder is missing: SQLite cannot open the database
    engine = make_engine(f"sqlite:///{folder / 'cache.db'}")
    store = PredictionStore(engine)
    rows = predictions_for(formulas[:10])

    assert not store.ping()
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        store.lookup("v1", formulas[:10])
    with pytest.raises(StoreUnavailable):
        store.save("v1", rows)
    assert store.last_error is not None

    folder.mkdir()  # the database comes back: no restart, no reconfiguration
    store.save("v1", rows)  # the tables are created on first contact
    assert store.lookup("v1", formulas[:10]) == rows
    assert store.ping() and store.last_error is None
    engine.dispose()


@pytest.mark.postgres
def test_postgres_on_a_closed_port_is_unavailable(postgres_schema_url: str) -> None:
    url = make_url(postgres_schema_url).set(host="127.0.0.1", port=free_port())  # nothing listens
    store = PredictionStore(make_engine(url.render_as_string(hide_password=False)))
    assert not store.ping()
    with pytest.raises(StoreUnavailable, match="OperationalError"):
        store.lookup("v1", ["Fe2O3"])
    with pytest.raises(StoreUnavailable):
        store.save("v1", {"Fe2O3": CachedPrediction(-1.0, None)})


@pytest.mark.postgres
def test_postgres_that_never_answers_fails_by_the_connect_timeout(postgres_schema_url: str) -> None:
    """The TCP handshake succeeds (the kernel completes it) but no byte ever comes back: without a
    connect timeout the lookup would hang forever; with it, it fails."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = make_url(postgres_schema_url).set(host="127.0.0.1", port=silent.getsockname()[1])
        store = PredictionStore(make_engine(url.render_as_string(hide_password=False)))
        with pytest.raises(StoreUnavailable):
            store.lookup("v1", ["Fe2O3"])


@pytest.mark.postgres
def test_postgres_outage_and_recovery(postgres_schema_url: str, formulas: list[str]) -> None:
    proxy = TcpProxy(postgres_schema_url)
    proxy.start()
    engine = make_engine(proxy.url)
    store = PredictionStore(engine)
    before, after = predictions_for(formulas[:50]), predictions_for(formulas[50:100])
    try:
        store.save("v1", before)  # the pool now holds a live connection

        proxy.stop()  # the network drops: the pooled connection is dead, new ones are refused
        with pytest.raises(StoreUnavailable):
            store.lookup("v1", formulas[:50])
        with pytest.raises(StoreUnavailable):
            store.save("v1", after)
        assert not store.ping()

        proxy.start()  # the network is back
        assert store.lookup("v1", formulas[:50]) == before
        store.save("v1", after)
        assert store.lookup("v1", formulas[:100]) == before | after
    finally:
        engine.dispose()
        proxy.stop()
