"""Fixtures for the client tests: one real ``ibrnet serve`` process shared by the session's client
tests (starting one costs about a second of CPU; CI has two cores), and a client on it.

The service runs with small limits so that ordinary test inputs already need several requests:
40 formulas and 2 KiB per request, and screening jobs committed 50 rows at a time with a pause,
so a large enumeration runs long enough to be cancelled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ibrnet
from tests.server_process import ibrnet_serve

MAX_BATCH_ITEMS = 40
MAX_BODY_BYTES = 2048
SERVER_ENV = {
    "IBRNET_MAX_BATCH_ITEMS": str(MAX_BATCH_ITEMS),
    "IBRNET_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "IBRNET_SCREEN_CHUNK_SIZE": "50",
    "IBRNET_SCREEN_CHUNK_PAUSE_MS": "20",
}


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real service on the standard tiny models and a fresh SQLite file."""
    root = tmp_path_factory.mktemp("client-server")
    with ibrnet_serve(models_dir, f"sqlite:///{root / 'ibrnet.db'}", root, SERVER_ENV) as (base, _):
        yield base


@pytest.fixture
def client(server: str) -> Iterator[ibrnet.Client]:
    with ibrnet.Client(server) as client:
        yield client
