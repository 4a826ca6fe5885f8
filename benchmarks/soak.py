"""Soak: a server answering distinct formulas for a long while, with the service's collector
settings against Python's defaults, all figures from one run.

    python benchmarks/soak.py [--formulas 150000] [--segments 6]

A fresh server is fast; one that has answered 100,000 formulas holds them in its parse memo and
in-memory prediction cache, and every full collection of Python's garbage collector scans them
(app/collector.py). Each server answers ``--formulas`` distinct OQMD formulas at concurrency 64,
every request a cache miss, in ``--segments`` equal runs, and reports per run: requests/s, p50 and
p99 latency, server CPU per request and the time the collector took (``ibrnet_gc_*`` in
/metrics). The last line compares the last runs: the settings serve against Python's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from serve import (  # benchmarks/serve.py (this script's folder is on sys.path)
    LoadResult,
    Server,
    health_requests,
    metric_sum,
    models_for_benchmark,
    oqmd_formulas,
    predict_requests,
    run_load,
)

from app.collector import PYTHON_DEFAULT_THRESHOLDS
from app.settings import Settings

CONCURRENCY = 64


def collector_seconds(server: Server) -> tuple[float, float]:
    """Seconds spent collecting so far, and full (generation 2) collections."""
    text = server.metrics()
    full = [
        line for line in text.splitlines() if line.startswith('ibrnet_gc_collections_total{generation="2"}')
    ]
    return metric_sum(text, "ibrnet_gc_pause_seconds_total"), float(full[0].rsplit(" ", 1)[1])


def soak(label: str, thresholds: tuple[int, int, int], formulas: list[str], segments: int, workdir: Path
         ) -> list[tuple[LoadResult, float, float]]:  # fmt: skip
    env = {"IBRNET_GC_THRESHOLDS": ",".join(map(str, thresholds))}
    models_dir, _ = models_for_benchmark(workdir / label)
    server = Server(models_dir, f"sqlite:///{workdir / f'{label}.db'}", workdir, env=env)
    out = []
    try:
        health = run_load(server, health_requests(10_000), CONCURRENCY)
        print(f"\n{label}: gc thresholds {thresholds}; GET /health at c={CONCURRENCY}: "
              f"{health.throughput:,.0f} req/s")  # fmt: skip
        print(f"{'answered':>9} {'req/s':>7} {'vs /health':>10} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7} "
              f"{'gc s':>6} {'full gc':>7}")  # fmt: skip
        size = len(formulas) // segments
        for start in range(0, size * segments, size):
            gc_before, full_before = collector_seconds(server)
            result = run_load(server, predict_requests(formulas[start : start + size]), CONCURRENCY)
            gc_after, full_after = collector_seconds(server)
            collecting, full = gc_after - gc_before, full_after - full_before
            out.append((result, collecting, full))
            rate = result.throughput
            print(f"{start + size:>9,} {rate:>7,.0f} {rate / health.throughput:>10.2f} "
                  f"{result.percentile_ms(50):>7.1f} {result.percentile_ms(99):>7.1f} "
                  f"{result.server_cpu_us:>7.0f} {collecting:>6.2f} {full:>7.0f}",
                  flush=True)  # fmt: skip
    finally:
        server.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formulas", type=int, default=150_000, help="distinct formulas per server")
    parser.add_argument("--segments", type=int, default=6, help="runs the formulas are split into")
    args = parser.parse_args()
    formulas = oqmd_formulas("train", args.formulas)
    workdir = Path(tempfile.mkdtemp(prefix="ibrnet-soak-"))
    try:
        python = soak("python", PYTHON_DEFAULT_THRESHOLDS, formulas, args.segments, workdir)
        service = soak("service", Settings().gc_thresholds, formulas, args.segments, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (old, old_gc, _), (new, new_gc, _) = python[-1], service[-1]
    print(f"\nlast run, service settings / Python's: req/s {new.throughput / old.throughput:.2f}x, "
          f"p99 {new.percentile_ms(99):.1f} / {old.percentile_ms(99):.1f} ms, "
          f"collecting {new_gc:.2f} / {old_gc:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
