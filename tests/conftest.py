"""Shared fixtures.

Stability: ``paper_reference`` is a Li-O hull reference whose hull is known on paper, and
``mp_models_dir`` the standard models plus a tiny ensemble answering formation_energy_mp.

Service tests: ``models_dir`` holds the standard tiny models (tests/model_factory.py), written
once per session under a fresh salt, so their versions never match a cache another run left.

Databases: ``database_url`` runs a test once on a fresh SQLite file and once on a fresh
PostgreSQL schema (when IBRNET_TEST_POSTGRES_URL points at a server, e.g. the one
scripts/start-postgres.sh starts). With CI=true a missing PostgreSQL is a failure, not a skip:
CI must prove the store works on both.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, make_url

from app.store.database import make_engine
from tests.model_factory import write_model, write_paper_reference, write_standard_models

POSTGRES_URL_VARIABLE = "IBRNET_TEST_POSTGRES_URL"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_standard_models(root, salt=uuid.uuid4().hex)
    return root


def postgres_server_url() -> str:
    """The test server's URL, or skip (fail under CI=true) when there is none."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {POSTGRES_URL_VARIABLE} is unset: CI must run the PostgreSQL tests")
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set (scripts/start-postgres.sh prints one)")
    return url


def libpq_url(url: str) -> str:
    """The same server as a plain postgresql:// URL psycopg understands (no +driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema (dropped afterwards)."""
    server = postgres_server_url()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    # search_path set at connect time: every table the code creates lands in the test's schema.
    yield (
        make_url(server)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute("SET lock_timeout = '10s'")  # a leaked connection must not hang the suite
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file in tmp_path, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ibrnet.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def paper_reference(tmp_path: Path) -> Path:
    """A hull reference whose Li-O hull is known on paper (PAPER_REFERENCE)."""
    return write_paper_reference(tmp_path)


@pytest.fixture(scope="session")
def mp_models_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard models plus a tiny ensemble answering formation_energy_mp."""
    root = tmp_path_factory.mktemp("mp-models")
    for folder in models_dir.iterdir():
        shutil.copytree(folder, root / folder.name)
    write_model(
        root / "mp-formation-energy",
        property_name="formation_energy_mp",
        unit="eV/atom",
        seed=7,
        ensemble=True,
        salt=uuid.uuid4().hex,
    )
    return root
