"""A client that sends a big batch and walks away does not keep the server computing it.

Found by a hostile-client pass (2026-12-02): a 20,000-formula JSON batch kept the CPU busy for
90 s after the client had gone. The JSON path now checks between chunks of 1,024 formulas.
"""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import urlparse

import httpx

from tests.api.harness import oqmd_formulas
from tests.server_process import ibrnet_serve

FORMULAS = 40_000


def computed(base: str) -> float:
    """Predictions computed by a model so far (every property), from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^ibrnet_cache_misses_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_a_batch_whose_client_left_stops_at_the_next_chunk(models_dir, tmp_path):
    formulas = oqmd_formulas(FORMULAS, split="train")
    body = json.dumps({"formulas": formulas, "properties": ["band_gap"]}).encode()
    with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path) as (base, _):
        address = urlparse(base)
        with socket.create_connection((address.hostname, address.port)) as client:
            client.sendall(
                b"POST /predict/batch HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + 60
            while computed(base) == 0:  # the work has started
                assert time.monotonic() < deadline
                time.sleep(0.05)
        # Gone. What the server computes from here is what it would have wasted.
        time.sleep(3)
        settled = computed(base)
        time.sleep(2)
        assert computed(base) == settled  # it stopped, and stays stopped
        assert settled < FORMULAS / 2, f"{settled:.0f} of {FORMULAS} predicted for a client that left"
        # The service is unharmed: the next client is answered.
        assert httpx.post(f"{base}/predict", json={"formula": "NaCl"}, timeout=30).status_code == 200
