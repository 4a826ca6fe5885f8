"""A small real HTTP server in front of a real service, for the retry tests.

It forwards every request to the service, except that POST /predict/batch first plays a script of
failures, one per request: an HTTP refusal (429 or 503 with a Retry-After), ``"truncate"``, the
service's real answer cut off half way and the connection closed (a server dying mid-response),
or ``"stall"``, no answer for STALL_S seconds (past the client's read timeout). It records each
request's method, path and headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

STALL_S = 1.5

Refusal = tuple[int, str | None]  # status, Retry-After
Step = Refusal | str


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        step = self.server.next_step(self.command, self.path, dict(self.headers.items()))
        if isinstance(step, tuple):
            status, retry_after = step
            payload = b'{"error": {"code": "overloaded", "message": "scripted refusal"}}'
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if step == "stall":
            time.sleep(STALL_S)
            self.close_connection = True
            return
        answer = httpx.request(
            self.command,
            f"{self.server.upstream}{self.path}",
            content=body,
            headers={"content-type": self.headers.get("content-type", "application/json")},
            timeout=30,
        )
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        if step == "truncate":
            self.wfile.write(answer.content[: len(answer.content) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(answer.content)


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, script: list[Step]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.script = list(script)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up on a stalled answer closed its end: expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_step(self, method: str, path: str, headers: dict[str, str]) -> Step | None:
        with self._lock:
            self.requests.append((method, path, {key.lower(): value for key, value in headers.items()}))
            if method == "POST" and path == "/predict/batch" and self.script:
                return self.script.pop(0)
            return None


@contextmanager
def scripted_server(upstream: str, script: list[Step]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(upstream, script)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
