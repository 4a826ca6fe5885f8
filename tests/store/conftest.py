"""Store fixtures: real formulas from the packaged datasets, a store on each database."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from app.store.predictions import PredictionStore

FORMULA_FILE = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/train.csv"


@pytest.fixture(scope="session")
def formulas() -> list[str]:
    """3,000 distinct formulas of the OQMD training split (the cache's keys in these tests)."""
    from training.data import ensure_wheel  # fetches the crabnet wheel once, hash-checked

    with zipfile.ZipFile(ensure_wheel()) as wheel:
        text = wheel.read(FORMULA_FILE).decode("utf-8")
    rows = csv.DictReader(io.StringIO(text))
    unique = list(dict.fromkeys(row["formula"] for row in rows))
    assert len(unique) >= 3000
    return unique[:3000]


@pytest.fixture
def store(engine: Engine) -> PredictionStore:
    return PredictionStore(engine)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Liveness bound, not a speed requirement: fail only if ``condition`` never comes true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
