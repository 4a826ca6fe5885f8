"""README's two commands, the Makefile behind them and .ci/run, checked with make's dry run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings

from ._paths import ROOT

CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.md"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def readme_commands() -> list[str]:
    """The commands of README's first code block (its opening lines)."""
    match = re.search(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, "README.md has no code block"
    lines = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line]


def dry_run(target: str, venv: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS"}}
    completed = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def test_readme_opens_with_serve_and_test() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:12]
    assert readme_commands()[:2] == ["make serve", "make test"]
    assert any("make serve" in line for line in head) and any("make test" in line for line in head)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert os.access(CI_RUN, os.X_OK), ".ci/run is not executable"
    lines = CI_RUN.read_text(encoding="utf-8").splitlines()
    assert lines[0] in {"#!/usr/bin/env bash", "#!/bin/bash"}
    code = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in code
    # the README's test command, then the container built and run (issue 17; root, as CI is)
    assert code[-2:] == [readme_commands()[1], "make container-check"]


@needs_make
def test_fresh_test_target_pins_torch_before_the_extras(tmp_path: Path) -> None:
    lines = dry_run("test", tmp_path / "venv")
    assert any(re.search(rf"-m venv {re.escape(str(tmp_path / 'venv'))}$", line) for line in lines)
    torch = next(i for i, line in enumerate(lines) if "pip install" in line and "torch==" in line)
    extras = next(i for i, line in enumerate(lines) if "pip install" in line and ".[train,dev]" in line)
    assert torch < extras, lines
    joined = "\n".join(lines)
    assert "start-postgres.sh" in joined and "IBRNET_TEST_POSTGRES_URL" in joined
    assert "ruff check ." in joined and "pytest" in joined


@needs_make
def test_fresh_serve_target_installs_no_torch(tmp_path: Path) -> None:
    lines = dry_run("serve", tmp_path / "venv")
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("torch" not in line and "[" not in line for line in installs), installs
    assert re.search(r"ibrnet serve --host 127\.0\.0\.1 --port 8000$", lines[-1]), lines


@needs_make
def test_stamps_prevent_reinstalling(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    for stamp in (".stamp-venv", ".stamp-serve", ".stamp-dev"):
        (venv / stamp).touch()  # newer than pyproject.toml
    for target in ("test", "serve"):
        assert not [line for line in dry_run(target, venv) if "pip install" in line or "-m venv" in line]


def test_readme_settings_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `IBRNET_(\w+)` \|", README.read_text(encoding="utf-8"), re.M))
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - documented == set(), "README's settings table lacks these IBRNET_ variables"
    assert documented - expected == set(), "README documents settings that do not exist"
