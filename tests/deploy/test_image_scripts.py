"""The small scripts the images run at build time and at health-check time, run for real here."""

from __future__ import annotations

import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ._paths import ROOT, SCRIPTS


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_gpu_requirements_are_the_dependencies_minus_onnxruntime() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    completed = run_script("requirements_from_pyproject.py", "--exclude", "onnxruntime")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert [d for d in dependencies if not d.startswith("onnxruntime")] == lines
    assert len(lines) == len(dependencies) - 1


def test_excluding_an_absent_dependency_fails() -> None:
    completed = run_script("requirements_from_pyproject.py", "--exclude", "onnxruntime-gpu")
    assert completed.returncode != 0 and "onnxruntime-gpu" in completed.stderr


@pytest.mark.parametrize(
    ("args", "expected_status"),
    [
        (["--require", "numpy", "onnxruntime", "--forbid", "onnxruntime-gpu"], 0),
        (["--forbid", "numpy"], 1),
        (["--require", "no-such-distribution-ibrnet"], 1),
        (["--provider", "CPUExecutionProvider"], 0),
        (["--provider", "NoSuchExecutionProvider"], 1),
    ],
)
def test_check_image_packages(args: list[str], expected_status: int) -> None:
    completed = run_script("check_image_packages.py", *args)
    assert completed.returncode == expected_status, completed.stdout + completed.stderr


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_passes_on_200(server_url: str) -> None:
    assert run_script("healthcheck.py", f"{server_url}/health").returncode == 0


def test_healthcheck_fails_on_503(server_url: str) -> None:
    assert run_script("healthcheck.py", f"{server_url}/ready").returncode == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()  # the port is now closed
    assert run_script("healthcheck.py", f"http://127.0.0.1:{port}/health").returncode == 1
