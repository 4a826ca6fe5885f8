"""SQLAlchemy engine and schema for the prediction cache and screening jobs.

SQLite (a file, WAL) is the default; PostgreSQL is used through psycopg 3. Nothing here runs at
import time: the service and the tests build engines from their own settings.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool

# A dead or unreachable PostgreSQL must fail a request's cache lookup fast, not hang it.
CONNECT_TIMEOUT_S = 2
# SQLite writers wait this long for another writer (another process, the CacheWriter) to finish.
SQLITE_BUSY_TIMEOUT_MS = 5_000
# Any constant shared by every process of the service: they serialize schema creation on it.
_SCHEMA_LOCK_KEY = 0x1B2E7
# Modules whose tables live on Base.metadata; create_schema imports them so no table is forgotten.
TABLE_MODULES = ("app.store.predictions", "app.store.jobs", "app.store.health")
# Each retry of create_schema gets past at least one object another process created meanwhile.
_SCHEMA_ATTEMPTS = 10


class Base(DeclarativeBase):
    """The one metadata for every table of the service."""


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the operation; callers carry on without it."""


class StoreFull(StoreUnavailable):
    """The database has no room left (a full disk, or a size limit): waiting does not help, so a
    writer that cannot shrink what it writes must stop (a screening job fails) rather than retry."""


# SQLITE_FULL (a full disk, or PRAGMA max_page_count reached) and PostgreSQL's disk_full.
_SQLITE_FULL = 13
_POSTGRES_DISK_FULL = "53100"


def out_of_space(error: BaseException) -> bool:
    original = getattr(error, "orig", None) or error
    if getattr(original, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(original, "sqlstate", None) == _POSTGRES_DISK_FULL:
        return True
    return "database or disk is full" in str(original) or "no space left on device" in str(original).lower()


def make_engine(url: str) -> Engine:
    """An engine for a sqlite:// or postgresql:// URL, tuned for the service (see module notes)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy would pick psycopg2, which we don't ship
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        # pre_ping: a connection the server dropped (restart, failover) is replaced, not handed out.
        return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}")


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    in_memory = not database or database == ":memory:"
    engine = create_engine(
        url,
        # The CacheWriter thread and request threads share the pool.
        connect_args={"check_same_thread": False},
        # Every new connection to :memory: is a new empty database: keep exactly one.
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                # WAL: readers never wait for the writer; NORMAL sync is durable enough in WAL mode
                # (a power cut can lose the last commits, never corrupt the file) and much faster.
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    return engine


def sqlite_file_identity(engine: Engine) -> tuple[str, int | None] | None:
    """(path, inode or None if the file is missing) of a file-backed SQLite database, else None.

    The inode tells a deleted file from the new one that the next connection creates at the same
    path (connections opened before go on writing into the deleted one)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    try:
        return database, os.stat(database).st_ino
    except FileNotFoundError:
        return database, None


def create_schema(engine: Engine) -> None:
    """Create every missing table; idempotent and safe when several processes start at once.

    PostgreSQL: the processes take turns on an advisory lock. SQLite has no such lock, and
    create_all checks then creates, so a process can lose the race between the two; it then
    gets "already exists" and simply checks again.
    """
    for module in TABLE_MODULES:
        importlib.import_module(module)
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                Base.metadata.create_all(connection)
                _add_missing_columns(connection)
            return
        except DBAPIError as error:
            if _already_exists(error) and attempt + 1 < _SCHEMA_ATTEMPTS:
                continue
            raise StoreUnavailable(f"cannot create the schema: {describe(error)}") from error


def _add_missing_columns(connection: Connection) -> None:
    """Columns added to a table after a database was created (nullable ones only): ALTER TABLE ADD.

    create_all makes missing tables, never missing columns; a database from an earlier release
    would otherwise fail on the first query naming a new column.
    """
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable and not column.primary_key:
                kind = column.type.compile(dialect=connection.dialect)
                connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:  # create_all makes an existing table's new indexes neither
            index.create(connection, checkfirst=True)


class SchemaGuard:
    """Runs a store's operations with its tables in place and database failures as StoreUnavailable.

    The schema is (re)checked on the first call after a failure, so a database that was down (or
    came back recreated and empty) is usable once it is back. Exceptions in ``passthrough`` are
    re-raised as they are (the caller's bugs, not outages).
    """

    def __init__(self, engine: Engine, store: str, passthrough: tuple[type[Exception], ...] = ()) -> None:
        self._engine = engine
        self._store = store
        self._passthrough = passthrough
        self._schema_ready = False

    @contextmanager
    def __call__(self, operation: str) -> Iterator[None]:
        try:
            if not self._schema_ready:
                create_schema(self._engine)
                self._schema_ready = True
            yield
        except StoreUnavailable as error:
            raise StoreUnavailable(f"{self._store} {operation}: {error}") from error
        except self._passthrough:
            raise
        except (DBAPIError, PoolTimeoutError) as error:
            self._schema_ready = False
            kind = StoreFull if out_of_space(error) else StoreUnavailable
            raise kind(f"{self._store} {operation}: {describe(error)}") from error


def _already_exists(error: DBAPIError) -> bool:
    # SQLite: "table x already exists"; PostgreSQL: DuplicateTable/DuplicateObject ("already
    # exists") or, for a CREATE racing another one, a unique violation in the catalog.
    message = str(error.orig).lower()
    return "already exists" in message or "pg_type_typname_nsp_index" in message


def describe(error: BaseException) -> str:
    """One line for logs and /ready: the driver's message without SQLAlchemy's SQL dump."""
    original = getattr(error, "orig", None) or error
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {first_line}" if first_line else type(original).__name__
