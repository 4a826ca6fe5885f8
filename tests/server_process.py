"""A real ``ibrnet serve`` process on a free port, for the tests that need the command as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.tcp_proxy import free_port

STARTUP_TIMEOUT_S = 60


@contextmanager
def ibrnet_serve(
    models_dir: Path,
    database_url: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) once GET /ready answers 200; SIGTERM (a graceful stop) on the way out
    unless the test already ended the process. ``env`` adds IBRNET_* settings. ``port``: a fixed
    one (a restarted server at the same address), else a free one."""
    port = port or free_port()
    environment = {**os.environ, "IBRNET_INTRA_OP_THREADS": "1", **(env or {})}
    environment.pop("IBRNET_MODELS_DIR", None)
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--models", str(models_dir)]
    # The log goes to a file, not a pipe: nobody reads a pipe while the test runs, and a full one
    # would block the server.
    log_path = cwd / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--database-url", database_url],
            cwd=cwd,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"server exited during start-up:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not become ready:\n{log_path.read_text()}"
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # graceful: the lifespan flushes the cache writer
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
