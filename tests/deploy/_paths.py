"""Where the deployment files live, and how to find the tools the dev extra installs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SCRIPTS = ROOT / "scripts"


def dev_tool(name: str) -> str:
    """A console script of the dev extra: beside this interpreter first (a venv not on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: pip install -e '.[dev]'")
    return found
