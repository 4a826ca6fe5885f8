"""``ibrnet serve`` as users run it: a real uvicorn process, a real HTTP client, a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ibrnet_serve(models_dir: Path, database_url: str, cwd: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "IBRNET_INTRA_OP_THREADS": "1"}
    env.pop("IBRNET_MODELS_DIR", None)
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--models", str(models_dir)]
    process = subprocess.Popen(
        [*command, "--database-url", database_url],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else "server exited"
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: the lifespan flushes the cache writer
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_answers_and_remembers_across_a_restart(tmp_path, models_dir):
    database_url = f"sqlite:///{tmp_path / 'ibrnet.db'}"
    with ibrnet_serve(models_dir, database_url, tmp_path) as base:
        first = httpx.post(f"{base}/predict", json={"formula": "Fe2O3"}, timeout=10)
        assert first.status_code == 200, first.text
        gap = first.json()["predictions"]["band_gap"]
        assert gap["unit"] == "eV" and isinstance(gap["value"], float) and gap["version"]
        assert gap["cached"] is False
        ready = httpx.get(f"{base}/ready", timeout=10).json()
        assert ready["status"] == "ready"
    with ibrnet_serve(models_dir, database_url, tmp_path) as base:
        again = httpx.post(f"{base}/predict", json={"formula": "Fe2O3"}, timeout=10).json()
        assert again["predictions"]["band_gap"]["cached"] is True
        assert again["predictions"]["band_gap"]["value"] == gap["value"]
        assert again["predictions"]["band_gap"]["version"] == gap["version"]
