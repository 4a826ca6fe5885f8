"""Fixtures for the screening tests: tiny real models and the running service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.api.harness import serve
from tests.screening.helpers import screen_settings


@pytest.fixture
async def served(models_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serve(screen_settings(models_dir, tmp_path)) as pair:
        yield pair


@pytest.fixture
def client(served: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]
