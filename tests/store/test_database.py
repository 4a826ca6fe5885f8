"""Engines and schema: driver choice, SQLite tuning, idempotent and race-safe schema creation."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event, inspect, text

from app.store.database import Base, create_schema, make_engine


def test_postgresql_urls_are_served_by_psycopg3() -> None:
    engine = make_engine("postgresql://cache:p%40ss@db.example:5433/ibrnet?sslmode=disable")
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.dialect.driver == "psycopg"
    assert engine.url.password == "p@ss"  # the rewrite keeps an escaped password intact
    assert engine.url.query == {"sslmode": "disable"}
    explicit = make_engine("postgresql+psycopg://cache@db.example/ibrnet")
    assert explicit.url.drivername == "postgresql+psycopg"


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        make_engine("mysql://user@localhost/ibrnet")


def test_sqlite_file_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()


def test_sqlite_connections_can_move_between_threads(tmp_path: Path) -> None:
    # The CacheWriter's thread reuses connections request threads opened (one pool).
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    answers: list[object] = []

    def query_from_another_thread() -> None:
        try:
            with engine.connect() as connection:
                answers.append(connection.execute(text("SELECT 1")).scalar())
        except Exception as error:  # reported below, in the test's thread
            answers.append(error)

    worker = threading.Thread(target=query_from_another_thread)
    worker.start()
    worker.join()
    assert answers == [1]
    engine.dispose()


def test_in_memory_sqlite_keeps_one_database(tmp_path: Path) -> None:
    engine = make_engine("sqlite://")
    create_schema(engine)
    with engine.connect() as connection:  # a second checkout must see the same tables
        assert "predictions" in inspect(connection).get_table_names()


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def test_create_schema_creates_every_table_and_is_idempotent(engine: Engine) -> None:
    create_schema(engine)
    create_schema(engine)
    assert "predictions" in table_names(engine)
    assert set(Base.metadata.tables) <= table_names(engine)


def test_create_schema_survives_losing_the_race(engine: Engine, database_url: str) -> None:
    """Another process creates the tables between our existence check and our CREATE TABLE."""
    rival = make_engine(database_url)
    rival_done: list[bool] = []

    def rival_creates_everything_first(_metadata: object, _connection: Connection, **_: object) -> None:
        if not rival_done:  # once: the rival's own create_all fires this event too
            rival_done.append(True)
            Base.metadata.create_all(rival)

    create_schema(rival)  # registers every table module on Base.metadata
    with rival.begin() as connection:
        Base.metadata.drop_all(connection)
    event.listen(Base.metadata, "before_create", rival_creates_everything_first)
    try:
        create_schema(engine)  # must not raise "already exists"
    finally:
        event.remove(Base.metadata, "before_create", rival_creates_everything_first)
        rival.dispose()
    assert rival_done, "the rival never ran: the test did not test the race"
    assert set(Base.metadata.tables) <= table_names(engine)


# Each child waits for a go-file after saying it is ready, so the create_schema calls overlap.
_CHILD = """
import sys, time
from pathlib import Path
from app.store.database import create_schema, make_engine
engine = make_engine(sys.argv[1])
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
create_schema(engine)
print("done", flush=True)
"""


def test_several_processes_create_the_schema_at_once(database_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, database_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        go.touch()
        results = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (stdout, stderr) in zip(children, results, strict=True):
        assert child.returncode == 0, stderr
        assert stdout.strip() == "done"
    engine = make_engine(database_url)
    assert set(Base.metadata.tables) <= table_names(engine)
    engine.dispose()


def test_a_database_from_before_a_new_column_gets_it_at_start(tmp_path):
    """create_all makes missing tables, not missing columns: a job store created before
    ``screening_jobs.client`` existed must still work (the column is added, existing rows kept)."""
    import sqlite3

    from app.store.database import create_schema, make_engine
    from app.store.jobs import JobStore

    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    JobStore(engine).create("old-job", {"formulas": []}, {}, 1, ["NaCl"])
    engine.dispose()
    with sqlite3.connect(path) as connection:  # the table as an earlier release made it
        connection.execute("DROP INDEX IF EXISTS ix_screening_jobs_client")
        connection.execute("ALTER TABLE screening_jobs DROP COLUMN client")
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    store = JobStore(engine)
    store.create("new-job", {"formulas": []}, {}, 1, ["KBr"], client="abc")
    assert store.get("old-job").client is None and store.get("new-job").client == "abc"
    assert [job.id for job in store.recent(client="abc")] == ["new-job"]
    engine.dispose()
