"""A client that leaves in the middle of its body is not a service failure (issue 17, defect 9)."""

from __future__ import annotations

import re
import socket
import time
from urllib.parse import urlsplit

import httpx

from tests.server_process import ibrnet_serve


def send_part_of_a_body(base: str, *, chunked: bool) -> None:
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 100000\r\n"
        connection.sendall(
            b"POST /predict/batch HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        )
        connection.sendall(framing + b"\r\n")
        part = b'{"formulas": ["Fe2O3", "NaC'
        connection.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        time.sleep(0.2)  # the server is reading the body when the client goes


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_leaving_mid_body_is_counted_apart_and_never_as_a_500(tmp_path, models_dir):
    with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path) as (base, _):
        for chunked in (False, True, False, True):
            send_part_of_a_body(base, chunked=chunked)
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            left = metric(text, "ibrnet_http_request_failures_total", code="client_disconnected")
            if left >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (
            httpx.post(f"{base}/predict/batch", json={"formulas": ["Fe2O3"]}, timeout=10).status_code == 200
        )
    assert left == 4
    assert metric(text, "ibrnet_http_request_failures_total", code="internal_error") == 0
    assert not re.search(r'ibrnet_http_requests_total\{[^}]*status="500"', text)
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert "Traceback" not in log and "client disconnected during the request body" in log
