"""Fixtures for the inference tests: tiny real models written by tests/model_factory.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.inference.registry import ModelRegistry
from tests.model_factory import load_registry, write_standard_models


@pytest.fixture(scope="session")
def standard_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("models")
    return root, write_standard_models(root)


@pytest.fixture(scope="session")
def registry(standard_models: tuple[Path, dict[str, Path]]) -> ModelRegistry:
    return load_registry(standard_models[0])
