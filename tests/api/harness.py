"""Helpers for the service tests: an app with its lifespan and an HTTP client, real formulas."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from training.data import ensure_wheel

OQMD_MEMBER = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/{split}.csv"


def make_settings(models_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "database_url": database_url,
        "intra_op_threads": 1,  # CI has 2 shared cores
        "batch_max_size": 64,
        "batch_max_wait_ms": 5.0,
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan running (models, batchers, store, writer), and a client."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ibrnet.test") as client,
    ):
        yield app, client


async def flush_cache_writes(app: FastAPI) -> None:
    """Wait until the background writer has written what it was given (it never blocks requests)."""
    assert await asyncio.to_thread(app.state.writer.flush, 30.0), "cache writer did not flush"


def oqmd_formulas(count: int, split: str = "test", offset: int = 0) -> list[str]:
    """Real formulas from the packaged OQMD data (distinct by fractional composition)."""
    with zipfile.ZipFile(ensure_wheel()) as wheel, wheel.open(OQMD_MEMBER.format(split=split)) as handle:
        reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8"))
        formulas = []
        for index, row in enumerate(reader):
            if index < offset:
                continue
            formulas.append(row["formula"])
            if len(formulas) == count:
                break
    return formulas


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text output (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if found == wanted:
            return float(value)
    return 0.0


def metric_total(text: str, name: str) -> float:
    """A Prometheus series summed over all its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
