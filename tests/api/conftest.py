"""Fixtures for the HTTP API tests: tiny real models, a SQLite cache file, the running app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.settings import Settings
from tests.api.harness import make_settings, serve


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cache.db'}"


@pytest.fixture
def settings(models_dir: Path, sqlite_url: str) -> Settings:
    return make_settings(models_dir, sqlite_url)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serve(settings) as pair:
        yield pair


@pytest.fixture
def app(served: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return served[0]


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]
