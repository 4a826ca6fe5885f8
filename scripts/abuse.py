"""Replay issue 17's hostile and careless clients against a real ``ibrnet serve``; print figures.

    python scripts/abuse.py [--models DIR]

Each numbered case is the issue's; each prints what it did and the figures before and after
(server RSS, /predict latency, status codes, counts). Everything runs on 127.0.0.1 against servers
this script starts on fresh SQLite files, with loops bounded in count and time. The shipped models
are used unless --models names another folder. The regression tests (tests/api, tests/screening,
tests/inference) prove each fix on its own; this script shows them together, as a client sees them.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# Short timeouts so the slow-client cases finish quickly; everything else is the default.
FAST_LIMITS = {"IBRNET_HEADER_TIMEOUT_S": "2", "IBRNET_BODY_TIMEOUT_S": "2", "IBRNET_INTRA_OP_THREADS": "1"}


@contextmanager
def server(models: Path, folder: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, **FAST_LIMITS, **env}
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--models", str(models)]
    command += ["--database-url", f"sqlite:///{folder / 'abuse.db'}"]
    log = (folder / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; see {log.name}")
        time.sleep(0.2)
    try:
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def rss_mb(process: subprocess.Popen[bytes]) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(process: subprocess.Popen[bytes]) -> float:
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict_ms(base: str, count: int = 20) -> float:
    """Median /predict latency (repeated formulas: the HTTP path, not the model)."""
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.post(f"{base}/predict", json={"formula": "Fe2O3"})
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def raw(base: str, payload: bytes, wait_s: float = 0.0) -> tuple[int, str]:
    """Send bytes on a fresh connection; (status, content type) of the answer (0 if none)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as connection:
        connection.sendall(payload)
        time.sleep(wait_s)
        data = b""
        try:
            while chunk := connection.recv(65536):
                data += chunk
        except OSError:
            pass
    if not data.startswith(b"HTTP/"):
        return 0, ""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    kind = next(
        (line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("content-type")), ""
    )
    return int(head.split()[1]), kind


def wait_job(client: httpx.Client, base: str, job_id: str, headers: dict | None = None) -> dict:
    deadline = time.monotonic() + 300
    while True:
        view = client.get(f"{base}/screen/{job_id}", headers=headers).json()
        if view["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def metric(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and label in line
    )


def case(number: str, title: str) -> None:
    print(f"\n[{number}] {title}")


def run(models: Path, folder: Path) -> None:
    with server(models, folder) as (base, process), httpx.Client(timeout=120) as client:
        case("1", "30 batches of 30 distinct 1 MB formulas")
        before = rss_mb(process)
        statuses = set()
        for batch in range(30):
            formulas = [f"Fe{batch}x{i}" + "O" * 1_000_000 for i in range(30)]
            statuses.add(client.post(f"{base}/predict/batch", json={"formulas": formulas}).status_code)
        print(f"  statuses {sorted(statuses)}; RSS {before:.0f} MB before, {rss_mb(process):.0f} MB after")

        case("2", "a small Parquet upload of 30,000,000 rows")
        buffer = io.BytesIO()
        # One formula, dictionary-encoded: 30M rows in a few hundred KB.
        column = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(30_000_000, dtype=np.int32)), pa.array(["Fe2O3"])
        )
        pq.write_table(pa.table({"formula": column}), buffer, compression="zstd")
        before, started = rss_mb(process), time.perf_counter()
        answer = client.post(f"{base}/screen", files={"file": ("many.parquet", buffer.getvalue())})
        size_kb, code, took = (
            len(buffer.getvalue()) / 1024,
            answer.json()["error"]["code"],
            time.perf_counter() - started,
        )
        print(
            f"  {size_kb:.0f} KB -> {answer.status_code} {code} in {took:.2f} s; "
            f"RSS {before:.0f} -> {rss_mb(process):.0f} MB"
        )

        case("5", "a CSV download of a running sorted job")
        job = client.post(
            f"{base}/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 24, "sort_by": "band_gap"}
        ).json()
        time.sleep(1.0)
        early = client.get(f"{base}/screen/{job['id']}/results", params={"format": "csv"})
        view = wait_job(client, base, job["id"])
        lines = client.get(f"{base}/screen/{job['id']}/results", params={"format": "csv"}).text.splitlines()[
            1:
        ]
        indices = [line.split(",", 1)[0] for line in lines]
        refusal = f"{early.status_code} {early.json()['error']['code']}"
        total = view["progress"]["total"]
        print(
            f"  while running: {refusal}; after: {len(indices):,} rows, "
            f"{len(set(indices)):,} distinct, total {total:,}"
        )

        case("6", "six Parquet downloads abandoned after 1 s; deep pages")
        latency = predict_ms(base)

        def abandon() -> None:
            with httpx.stream(
                "GET", f"{base}/screen/{job['id']}/results?format=parquet", timeout=30
            ) as response:
                deadline = time.monotonic() + 1.0
                for _ in response.iter_bytes():
                    if time.monotonic() > deadline:
                        return

        threads = [threading.Thread(target=abandon) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.5)
        print(f"  /predict p50 {latency:.1f} ms before, {predict_ms(base):.1f} ms right after the six left")
        count = client.get(f"{base}/screen/{job['id']}").json()["result_count"]
        started = time.perf_counter()
        client.get(
            f"{base}/screen/{job['id']}/results", params={"offset": max(0, count - 1000), "limit": 1000}
        )
        by_offset = time.perf_counter() - started
        page = client.get(f"{base}/screen/{job['id']}/results", params={"limit": 1000}).json()
        started = time.perf_counter()
        client.get(f"{base}/screen/{job['id']}/results", params={"after": page["next_after"], "limit": 1000})
        print(
            f"  {count:,} rows: last page by offset {by_offset * 1000:.0f} ms; "
            f"next page by key {(time.perf_counter() - started) * 1000:.0f} ms"
        )

        case("7", "20 refused enumerations (86 elements, max_atoms 1000)")
        elements = client.get(f"{base}/models").json()["models"][0]["features"]["elements"]
        latency, cpu_before = predict_ms(base), cpu_s(process)
        huge = {"chemsys": "-".join(elements), "max_atoms": 1000}
        codes = {client.post(f"{base}/screen", json=huge).status_code for _ in range(20)}
        each_ms = 1000 * (cpu_s(process) - cpu_before) / 20
        print(
            f"  statuses {sorted(codes)}; server CPU {each_ms:.1f} ms each; "
            f"/predict p50 {latency:.1f} ms before"
        )
        print(f"  /predict p50 right after: {predict_ms(base):.1f} ms")

        case("8", "slow and idle clients")
        idle = [socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) for _ in range(500)]
        during = client.get(f"{base}/health").status_code
        time.sleep(2.5)
        closed = 0
        for connection in idle:
            connection.settimeout(2)
            with suppress(OSError):
                closed += connection.recv(65536).startswith(b"HTTP/1.1 408")
            connection.close()
        big_header = raw(base, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000)
        trickle = raw(base, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        print(
            f"  500 idle connections: /health {during} meanwhile, "
            f"{closed} closed with 408 by the header timeout"
        )
        print(f"  a 1 MB header -> {big_header}; a stalled body -> {trickle}")

        case("9", "100 clients leaving mid-body")
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as connection:
                connection.sendall(
                    b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
                )
        time.sleep(1.0)
        metrics = client.get(f"{base}/metrics").text
        five = metric(metrics, "ibrnet_http_requests_total", 'status="500"')
        left = metric(metrics, "ibrnet_http_request_failures_total", "client_disconnected")
        print(f"  500s counted: {five:.0f}; client_disconnected counted: {left:.0f}")

        case("11", "malformed framing; formulas that look like spreadsheet formulas")
        malformed = raw(base, b"GET /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        text = client.post(
            f"{base}/predict/batch",
            json={"formulas": ["=HYPERLINK(1)", "+1"]},
            headers={"accept": "text/csv"},
        ).text.splitlines()[1:]
        print(f"  malformed -> {malformed}; CSV formula cells {[line.split(',', 1)[0] for line in text]}")

        case("10", "the SQLite file deleted under the service")
        for leftover in folder.glob("abuse.db*"):
            leftover.unlink()
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses.append(client.get(f"{base}/ready").status_code)
            if statuses[-1] == 200 and 503 in statuses:
                break
            time.sleep(0.3)
        print(f"  /ready: {statuses[0]} at once, {statuses[-1]} after {len(statuses)} checks (a new file)")

    keyed = folder / "keys"
    keyed.mkdir()
    with (
        server(
            models,
            keyed,
            IBRNET_API_KEYS="alpha,beta",
            IBRNET_SCREEN_MAX_JOBS_PER_KEY="1",
            IBRNET_SCREEN_SLICE_S="1",
        ) as (base, _),
        httpx.Client(timeout=120) as client,
    ):
        case("3", "two keys: one key's job, seen and stopped by the other")
        alpha, beta = {"X-API-Key": "alpha"}, {"X-API-Key": "beta"}
        job = client.post(
            f"{base}/screen", json={"chemsys": "Li-Fe-P-O", "max_atoms": 20}, headers=alpha
        ).json()
        seen = client.get(f"{base}/screen/{job['id']}", headers=beta).status_code
        stopped = client.delete(f"{base}/screen/{job['id']}", headers=beta).status_code
        listed = len(client.get(f"{base}/screen", headers=beta).json()["jobs"])
        anonymous = client.get(f"{base}/screen").status_code
        print(f"  beta GET {seen}, beta DELETE {stopped}, beta's list {listed} jobs, no key {anonymous}")

        case("4", "quota, fair turns, purge")
        second = client.post(f"{base}/screen", json={"formulas": ["NaCl"]}, headers=alpha)
        small = client.post(f"{base}/screen", json={"formulas": ["KBr", "NaCl"]}, headers=beta).json()
        started = time.perf_counter()
        small_view = wait_job(client, base, small["id"], beta)
        big_view = client.get(f"{base}/screen/{job['id']}", headers=alpha).json()
        purged = client.delete(
            f"{base}/screen/{small['id']}", params={"purge": "true"}, headers=beta
        ).status_code
        took, progress = time.perf_counter() - started, big_view["progress"]
        print(
            f"  alpha's second job: {second.status_code} {second.json()['error']['code']}, "
            f"Retry-After {second.headers.get('retry-after')}"
        )
        print(
            f"  beta's small job {small_view['status']} in {took:.1f} s while alpha's big one was "
            f"{big_view['status']} at {progress['done']:,}/{progress['total']:,}; purge -> {purged}"
        )
        client.delete(f"{base}/screen/{job['id']}", headers=alpha)

    case("8b", "SIGTERM while a client trickles a body")
    with server(models, folder) as (base, process):
        host, port = base.removeprefix("http://").split(":")
        connection = socket.create_connection((host, int(port)))
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        print(f"  the server stopped {time.monotonic() - started:.1f} s after SIGTERM")
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(args.models.resolve(), Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
