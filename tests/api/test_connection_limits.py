"""Slow, idle, oversized and malformed clients against a real ``ibrnet serve`` (issue 17, defects 8, 11)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.slow

LIMITS = {
    "IBRNET_HEADER_TIMEOUT_S": "1",
    "IBRNET_BODY_TIMEOUT_S": "1",
    "IBRNET_MIN_BODY_RATE": "100",
    "IBRNET_MIN_BODY_RATE_GRACE_S": "1.5",
    "IBRNET_MAX_HEADER_BYTES": "8192",
    "IBRNET_MAX_CONNECTIONS": "40",
    "IBRNET_SHUTDOWN_TIMEOUT_S": "5",
}


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    with ibrnet_serve(models_dir, f"sqlite:///{folder / 'c.db'}", folder, env=LIMITS) as (base, process):
        yield base, process


def connect(base: str) -> socket.socket:
    address = urlsplit(base)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def answer(connection: socket.socket) -> tuple[int, dict | None]:
    """(status, JSON error body or None) of what the server sent before closing."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    if not data:
        return 0, None
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def test_a_client_that_never_finishes_its_headers_is_closed_with_408(server):
    base, _ = server
    idle, slow = connect(base), connect(base)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    started = time.monotonic()
    for connection in (idle, slow):
        status, body = answer(connection)
        assert status == 408 and body["error"]["code"] == "header_timeout"
    assert time.monotonic() - started < 8


def test_oversized_headers_are_refused_as_they_arrive(server):
    base, _ = server
    connection = connect(base)
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
    status, body = answer(connection)
    assert status == 431 and body["error"]["code"] == "headers_too_large"


def test_a_stalled_body_is_closed_with_408_and_is_not_a_500(server):
    base, _ = server
    connection = connect(base)
    connection.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    status, body = answer(connection)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'status="500"' not in metrics


def test_a_trickled_body_that_never_pauses_long_is_closed_for_its_rate(server):
    """A byte every 0.4 s never pauses for the 1 s the pause rule allows, but stays far under
    100 bytes/s: closed once the grace period (1.5 s) is over, where it held a slot for minutes."""
    base, _ = server
    connection = connect(base)
    connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    started = time.monotonic()
    connection.settimeout(0.4)
    data = b""
    while time.monotonic() - started < 10:
        try:
            connection.sendall(b" ")
            data = connection.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if data:
            break
    connection.settimeout(10)
    closed_after = time.monotonic() - started
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 408 and json.loads(body)["error"]["code"] == "body_too_slow"
    assert 1.4 < closed_after < 4, closed_after


def test_a_body_sent_at_a_steady_pace_is_not_cut_off(server):
    """A slow but honest upload (600 bytes/s, past the grace period) is answered."""
    base, _ = server
    body = json.dumps({"formulas": ["NaCl"] * 240}).encode()  # about 2 s at this pace
    connection = connect(base)
    connection.sendall(
        b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    for start in range(0, len(body), 60):
        connection.sendall(body[start : start + 60])
        time.sleep(0.1)
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_malformed_http_gets_the_services_json_error(server):
    base, _ = server
    connection = connect(base)
    connection.sendall(b"GET /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    status, body = answer(connection)
    assert status == 400 and body["error"]["code"] == "malformed_request"


def test_idle_connections_cannot_lock_everyone_out(server):
    base, _ = server
    crowd = [connect(base) for _ in range(60)]  # more than IBRNET_MAX_CONNECTIONS (40)
    refused = 0
    for connection in crowd[45:]:
        status, body = answer(connection)
        refused += status == 503 and body["error"]["code"] == "too_many_connections"
    assert refused >= 10  # (a slow machine may free a few slots through the 1 s header timeout)
    deadline = time.monotonic() + 20  # the header timeout closes the idle ones
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "/health never answered again"
        time.sleep(0.2)
    for connection in crowd:
        connection.close()


def test_sigterm_stops_the_server_while_a_client_trickles_a_body(models_dir, tmp_path):
    with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, env=LIMITS) as (base, process):
        connection = connect(base)
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=20)
        assert time.monotonic() - started < 10
        connection.close()


def test_a_large_body_in_the_same_read_as_the_headers_is_not_counted_as_headers(server):
    """8 KB of headers allowed, a 200 KB JSON body sent in one write with them: a normal request."""
    base, _ = server
    formulas = ",".join('"NaCl"' for _ in range(30_000)).encode()
    body = b'{"formulas": [' + formulas + b"]}"
    connection = connect(base)
    head = (
        b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    )
    connection.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    data = b""
    while chunk := connection.recv(1 << 20):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
