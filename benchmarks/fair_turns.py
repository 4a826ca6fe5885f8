"""How long a small screen waits behind another client's big ones: turns by client vs by job, one run.

    python benchmarks/fair_turns.py [--big-jobs 6] [--big-rows 40000] [--slice-s 3]

Two fresh `ibrnet serve` (shipped models, new SQLite file, keys off). On each, one client queues
``--big-jobs`` screens of ``--big-rows`` real formulas, waits until the first runs, then a
3-formula screen is sent (1) from the same address: one client, so its turn comes after every
big job's, as any job's did before turns went round the clients; (2) from another loopback
address (127.0.0.2): a second client, whose screen goes next. Prints both waits (submit to
succeeded) and their ratio. The big jobs are cancelled once the small one is done.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import real_formulas
from serve import Server

from app.settings import REPOSITORY_MODELS_DIR

SMALL = ["NaCl", "KBr", "LiFePO4"]


def wait_until(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/screen/{job_id}").json()
        if job["status"] in statuses:
            return job
        if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise SystemExit(f"job {job_id}: {job['status']} ({job.get('error')})")
        time.sleep(0.05)


def small_screen_wait(big_jobs: int, formulas: list[str], slice_s: float, other_address: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        server = Server(REPOSITORY_MODELS_DIR, f"sqlite:///{folder}/ibrnet.db", Path(folder),
                        env={"IBRNET_SCREEN_SLICE_S": str(slice_s)})  # fmt: skip
        try:
            big = httpx.Client(base_url=server.base, timeout=600)
            local = "127.0.0.2" if other_address else "127.0.0.1"
            small = httpx.Client(
                base_url=server.base, timeout=60, transport=httpx.HTTPTransport(local_address=local)
            )
            ids = [big.post("/screen", json={"formulas": formulas}).json()["id"] for _ in range(big_jobs)]
            wait_until(big, ids[0], ("running",), 120)
            started = time.monotonic()
            job = small.post("/screen", json={"formulas": SMALL}).json()
            wait_until(small, job["id"], ("succeeded",), 3600)
            waited = time.monotonic() - started
            for job_id in ids:
                big.delete(f"/screen/{job_id}")
            return waited
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-jobs", type=int, default=6)
    parser.add_argument("--big-rows", type=int, default=40_000)
    parser.add_argument("--slice-s", type=float, default=3.0, help="IBRNET_SCREEN_SLICE_S of both servers")
    args = parser.parse_args()
    formulas = real_formulas(args.big_rows)
    print(f"{args.big_jobs} screens of {args.big_rows:,} real formulas from one client, turns of "
          f"{args.slice_s:g} s; then a {len(SMALL)}-formula screen", flush=True)  # fmt: skip
    same = small_screen_wait(args.big_jobs, formulas, args.slice_s, other_address=False)
    print(f"from the same address (one client: turns by job, as before): waited {same:.1f} s", flush=True)
    other = small_screen_wait(args.big_jobs, formulas, args.slice_s, other_address=True)
    print(f"from another address (a second client: turns by client): waited {other:.1f} s")
    print(f"ratio, by job / by client: {same / other:.1f}x")


if __name__ == "__main__":
    main()
