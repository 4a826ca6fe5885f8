"""Helpers for the service tests: an app with its lifespan and an HTTP client, real formulas,
and a TCP proxy that can cut a database off and bring it back."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import socket
import threading
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


class TcpProxy:
    """127.0.0.1:port -> target; ``cut()`` drops every connection and refuses new ones, ``restore()``
    lets them through again. A database outage as the service sees it, with a real database."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
