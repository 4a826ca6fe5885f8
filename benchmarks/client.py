"""The Python client against /predict/batch called directly: the same formulas, one run.

    python benchmarks/client.py [--formulas 250000]

Each side gets its own fresh `ibrnet serve` (shipped models, new SQLite file), so both start with
a cold cache: (1) the formulas posted to /predict/batch in requests of the server's own
IBRNET_MAX_BATCH_ITEMS, one after another, the JSON parsed; (2) `ibrnet.Client.predict`, which
splits them by GET /limits and its batch size, sends a few at a time and builds a DataFrame.
Prints both times, their ratio, and checks the client's rows are complete and in input order.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server

import ibrnet
from app.settings import REPOSITORY_MODELS_DIR
from training.data import ensure_wheel

OQMD = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/{split}.csv"


def real_formulas(count: int) -> list[str]:
    """Distinct real formulas from the packaged OQMD splits (train, then val and test)."""
    seen: set[str] = set()
    out: list[str] = []
    with zipfile.ZipFile(ensure_wheel()) as wheel:
        for split in ("train", "val", "test"):
            with wheel.open(OQMD.format(split=split)) as handle:
                for row in csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8")):
                    if row["formula"] not in seen:
                        seen.add(row["formula"])
                        out.append(row["formula"])
                        if len(out) == count:
                            return out
    raise SystemExit(f"only {len(out)} distinct formulas in the packaged OQMD splits")


def direct(server: Server, formulas: list[str]) -> float:
    limit = httpx.get(f"{server.base}/limits", timeout=30).json()["max_batch_items"]
    started = time.perf_counter()
    rows = 0
    with httpx.Client(timeout=600) as http:
        for start in range(0, len(formulas), limit):
            body = {"formulas": formulas[start : start + limit]}
            response = http.post(f"{server.base}/predict/batch", json=body)
            response.raise_for_status()
            rows += len(response.json()["results"])
    assert rows == len(formulas)
    return time.perf_counter() - started


def through_client(server: Server, formulas: list[str]) -> float:
    started = time.perf_counter()
    with ibrnet.Client(server.base) as client:
        frame = client.predict(formulas, progress=False)
    elapsed = time.perf_counter() - started
    assert list(frame["formula"]) == formulas, "rows out of order or missing"
    print(f"client rows: {len(frame):,}, refused {int(frame['error_code'].notna().sum()):,}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formulas", type=int, default=250_000)
    args = parser.parse_args()
    formulas = real_formulas(args.formulas)
    times = {}
    for name, run in (("/predict/batch direct", direct), ("ibrnet.Client.predict", through_client)):
        with tempfile.TemporaryDirectory() as folder:
            server = Server(REPOSITORY_MODELS_DIR, f"sqlite:///{folder}/cache.db", Path(folder))
            try:
                times[name] = run(server, formulas)
            finally:
                server.stop()
        rate = len(formulas) / times[name]
        print(f"{name}: {len(formulas):,} formulas in {times[name]:.1f} s ({rate:,.0f}/s)")
    ratio = times["ibrnet.Client.predict"] / times["/predict/batch direct"]
    print(f"client time / direct time: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
