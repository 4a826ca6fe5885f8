"""Screening benchmark: enumeration end to end against the model-only ceiling, Dask scaling, and
/predict latency while a screening job runs. All figures from one run.

    python benchmarks/screen.py [--n 1000000] [--dask-n 200000] [--requests 2000]
    python benchmarks/screen.py --previous HEAD~1 --n 200000   # the model set against a previous one

1. model-only ONNX Runtime throughput on featurized rows of the same space, in the same chunk
   size and with the same threads as the end-to-end run (the ceiling);
2. compositions per second for an N-composition enumeration end to end in one process:
   enumerate -> canonical keys -> featurize -> ORT -> Parquet file, as a ratio of (1)
   (target >= 0.60), with a per-stage breakdown measured on a sample;
3. the Dask speed-up from 1 to 2 workers (LocalCluster, one single-threaded ORT session per
   worker), on --dask-n compositions; cluster start-up is excluded, the workers' model loading is
   done by a warm-up run first;
4. POST /predict p50/p99 at concurrency 8 (distinct formulas: every request runs the model) on an
   idle `ibrnet serve`, then again while a large screening job runs in the same server, with the
   job's own progress rate during that window.

The model is the shipped one when models/ has one, else a freshly initialised 4.5M-parameter
iBRNet (an untrained network costs exactly what a trained one does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from app.inference.registry import ModelRegistry
from app.screening.compute import ChunkResult, ScreenModels
from app.screening.dask_runner import ModelSpec, model_loads, run_screen, seed_models
from app.screening.enumerate import ChemicalSpace
from app.screening.io import ResultWriter, chunk_table
from app.screening.sources import EnumerationSource
from app.screening.spec import ScreenRequest
from app.settings import Settings, available_cpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as serve_bench  # benchmarks/serve.py: model set-up, the server, the load generator

# 10 elements, reduced formulas of up to 14 atoms: 1,940,743 compositions; runs take the first N.
CHEMSYS = "Li-Na-Fe-Mn-Co-Ni-Cu-P-O-F"
MAX_ATOMS = 14


class FirstRows(EnumerationSource):
    """The first ``limit`` compositions of a space (a 1,000,000-composition enumeration)."""

    def __init__(self, space: ChemicalSpace, limit: int) -> None:
        super().__init__(space)
        self.limit = min(limit, space.count())

    @property
    def total(self) -> int:
        return self.limit


def load_models(models_dir: Path, threads: int, every_property: bool = False) -> ScreenModels:
    registry = ModelRegistry.load(
        models_dir, device="cpu", intra_op_threads=threads, prefer_int8_on_cpu=False, warmup_rows=4096
    )
    # One property unless asked: the ratio to the ceiling is per model call.
    return ScreenModels(list(registry.models) if every_property else [registry.models[0]])


def ceiling(models: ScreenModels, space: ChemicalSpace, rows: int, chunk: int) -> float:
    """Rows per second through ORT alone, on precomputed features of this space's compositions."""
    source = EnumerationSource(space)
    amounts = np.concatenate(list(space.iter_amounts(0, rows, chunk)))
    features = models.models[0].featurizer.transform_batch(source.encoder.batch(amounts)).astype(np.float32)
    model = models.models[0]
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for start in range(0, len(features), chunk):
            model.run(features[start : start + chunk])
        rates.append(len(features) / (time.perf_counter() - started))
    return statistics.median(rates)


def stage_breakdown(models: ScreenModels, space: ChemicalSpace, rows: int, chunk: int, out: Path) -> dict:
    """Microseconds per composition of each stage, on a sample, run one after the other."""
    source = EnumerationSource(space)
    model = models.models[0]
    times = dict.fromkeys(("enumerate", "keys", "ragged batch", "featurize", "ORT", "table + Parquet"), 0.0)
    with ResultWriter(out, models.properties, "parquet") as writer:
        clock = time.perf_counter()
        for amounts in space.iter_amounts(0, rows, chunk):
            now = time.perf_counter()
            times["enumerate"] += now - clock
            keys = source.encoder.keys(amounts)
            clock, now = now, time.perf_counter()
            times["keys"] += now - clock
            batch = source.encoder.batch(amounts)
            clock, now = now, time.perf_counter()
            times["ragged batch"] += now - clock
            features = model.featurizer.transform_batch(batch).astype(np.float32)
            clock, now = now, time.perf_counter()
            times["featurize"] += now - clock
            output = model.run(features).astype(np.float64)
            clock, now = now, time.perf_counter()
            times["ORT"] += now - clock
            result = ChunkResult(
                np.arange(len(keys)), keys, keys, {model.property: output[:, 0]},
                {model.property: output[:, 1]}, [None] * len(keys),
            )  # fmt: skip
            writer.write(chunk_table(result, models.properties))
            clock, now = now, time.perf_counter()
            times["table + Parquet"] += now - clock
            clock = time.perf_counter()
    return {stage: seconds / rows * 1e6 for stage, seconds in times.items()}


def end_to_end(models: ScreenModels, models_dir: Path, source: FirstRows, screen: ScreenRequest, threads: int,
               out: Path, chunk: int) -> float:  # fmt: skip
    spec = ModelSpec.of(models, models_dir, device="cpu", intra_op_threads=threads)
    seed_models(spec, models)  # the sessions measured for the ceiling
    summary = run_screen(source, screen, spec, out, partition_size=100_000, chunk_size=chunk)
    assert summary.rows_out == source.total, summary
    return summary.rate


def dask_rates(models: ScreenModels, models_dir: Path, space: ChemicalSpace, rows: int, screen: ScreenRequest,
               workdir: Path, chunk: int) -> dict[int, float]:  # fmt: skip
    from distributed import Client, LocalCluster

    spec = ModelSpec.of(models, models_dir, device="cpu", intra_op_threads=1)
    partition = max(chunk, min(25_000, rows // 8))  # several partitions per worker
    rates = {}
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            # Warm-up: every worker loads the model (once) before the clock starts.
            warm = FirstRows(space, 4 * workers * 2048)
            run_screen(warm, screen, spec, workdir / "warm.parquet", dask=cluster.scheduler_address,
                       partition_size=2048, chunk_size=chunk)  # fmt: skip
            loaded = client.run(model_loads)
            assert all(count == 1 for count in loaded.values()), loaded
            summary = run_screen(
                FirstRows(space, rows), screen, spec, workdir / f"dask{workers}.parquet",
                dask=cluster.scheduler_address, partition_size=partition, chunk_size=chunk,
            )  # fmt: skip
            rates[workers] = summary.rate
    return rates


def fairness(models_dir: Path, workdir: Path, requests: int) -> dict:
    """/predict at concurrency 8 on an idle server, then while a big screening job runs in the same
    server: with the runner at nice 10 (the default) and, for comparison, at nice 0."""
    warm_up = 1000  # the first few hundred requests after start-up are slower (allocations, caches)
    formulas = serve_bench.oqmd_formulas("train", 3 * requests + warm_up)
    sets = {
        "idle": formulas[:requests],
        "busy": formulas[requests : 2 * requests],
        "idle_after": formulas[2 * requests : 3 * requests],
        "warm": formulas[-warm_up:],
    }
    out: dict = {}
    saved = dict(os.environ)
    try:
        for nice in (10, 0):
            # Chunks of 1024: the job's progress (committed per chunk) moves within the window.
            os.environ.update({"IBRNET_SCREEN_NICE": str(nice), "IBRNET_SCREEN_CHUNK_SIZE": "1024"})
            out.update(one_server(models_dir, workdir, sets, nice))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return out


def one_server(models_dir: Path, workdir: Path, sets: dict[str, list[str]], nice: int) -> dict:
    out: dict = {}
    server = serve_bench.Server(models_dir, f"sqlite:///{workdir / f'service-{nice}.db'}", workdir)
    try:
        serve_bench.run_load(server, serve_bench.predict_requests(sets["warm"]), 8)
        if nice == 10:
            out["idle"] = serve_bench.run_load(server, serve_bench.predict_requests(sets["idle"]), 8)
        job = httpx.post(
            f"{server.base}/screen", json={"chemsys": CHEMSYS, "max_atoms": MAX_ATOMS}, timeout=30
        )
        job.raise_for_status()
        job_url = f"{server.base}/screen/{job.json()['id']}"
        while httpx.get(job_url, timeout=10).json()["progress"]["done"] == 0:
            time.sleep(0.2)
        out[f"alone_rate_{nice}"] = job_rate(job_url, lambda: time.sleep(5))
        busy: list = []
        out[f"busy_rate_{nice}"] = job_rate(
            job_url,
            lambda: busy.append(serve_bench.run_load(server, serve_bench.predict_requests(sets["busy"]), 8)),
        )
        out[f"busy_{nice}"] = busy[0]
        httpx.delete(job_url, timeout=10)
        if nice == 10:  # idle again, with the job cancelled: the machine is shared, so measure twice
            while httpx.get(f"{server.base}/screen", timeout=10).json()["jobs"][0]["status"] == "running":
                time.sleep(0.1)
            out["idle_after"] = serve_bench.run_load(
                server, serve_bench.predict_requests(sets["idle_after"]), 8
            )
    finally:
        server.stop()
    return out


def job_rate(job_url: str, during: Callable[[], object]) -> float:
    """Compositions per second the job committed while ``during`` ran."""
    before, started = httpx.get(job_url, timeout=10).json()["progress"]["done"], time.perf_counter()
    during()
    after = httpx.get(job_url, timeout=10).json()["progress"]["done"]
    return (after - before) / (time.perf_counter() - started)


def compare_sets(previous: str, n: int) -> int:
    """Every model of the new set (models/) against the previous set: in-process screening of the
    first ``n`` compositions end to end (all properties, to Parquet), interleaved, twice each."""
    import model_sets  # benchmarks/model_sets.py

    settings = Settings()
    threads, chunk = settings.intra_op_threads, settings.screen_chunk_size
    space = ChemicalSpace.from_chemsys(CHEMSYS, MAX_ATOMS)
    workdir = Path(tempfile.mkdtemp(prefix="ibrnet-screen-sets-"))
    try:
        sets = model_sets.new_and_previous(previous, workdir)
        rates: dict[str, list[float]] = {name: [] for name in sets}
        for _ in range(2):
            for name, (models_dir, _) in sets.items():
                models = load_models(models_dir, threads, every_property=True)
                screen = ScreenRequest(chemsys=CHEMSYS, max_atoms=MAX_ATOMS, properties=models.properties)
                out = workdir / f"{name}.parquet"
                rates[name].append(
                    end_to_end(models, models_dir, FirstRows(space, n), screen, threads, out, chunk)
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    new, old = (statistics.median(rates[name]) for name in ("new", "previous"))
    print()
    print(f"in-process screening, {n:,} compositions of {CHEMSYS} (max_atoms {MAX_ATOMS}), every property, "
          f"{threads} ORT threads, medians of 2 interleaved runs")  # fmt: skip
    print(f"  new {new:,.0f}/s ({', '.join(f'{r:,.0f}' for r in rates['new'])}); previous {old:,.0f}/s "
          f"({', '.join(f'{r:,.0f}' for r in rates['previous'])}); new/previous {new / old:.2f}")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="compositions for the end-to-end run")
    parser.add_argument("--dask-n", type=int, default=200_000, help="compositions per Dask run")
    parser.add_argument("--requests", type=int, default=4_000, help="/predict requests per latency run")
    parser.add_argument("--sample", type=int, default=100_000, help="rows for the ceiling and the breakdown")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument(
        "--previous",
        metavar="REV_OR_DIR",
        help="instead: screen --n compositions with the whole model set (models/) and with a previous one "
        "(a git revision of models/, or a folder) and print the ratio",
    )
    args = parser.parse_args()
    if args.previous:
        return compare_sets(args.previous, args.n)

    settings = Settings()
    threads, chunk = settings.intra_op_threads, settings.screen_chunk_size
    space = ChemicalSpace.from_chemsys(CHEMSYS, MAX_ATOMS)
    screen = ScreenRequest(chemsys=CHEMSYS, max_atoms=MAX_ATOMS)
    workdir = Path(tempfile.mkdtemp(prefix="ibrnet-screen-bench-"))
    load_before = os.getloadavg()
    try:
        models_dir, model_label = serve_bench.models_for_benchmark(workdir)
        models = load_models(models_dir, threads)
        screen = screen.model_copy(update={"properties": models.properties})
        sample = min(args.sample, args.n)
        ceilings = [ceiling(models, space, sample, chunk)]
        one_thread = ceiling(load_models(models_dir, 1), space, sample // 2, chunk)
        breakdown = stage_breakdown(models, space, sample, chunk, workdir / "stages.parquet")
        e2e = end_to_end(
            models, models_dir, FirstRows(space, args.n), screen, threads, workdir / "e2e.parquet", chunk
        )
        ceilings.append(ceiling(models, space, sample, chunk))  # after too: the machine is shared
        out_size = (workdir / "e2e.parquet").stat().st_size
        dask = (
            None
            if args.skip_dask
            else dask_rates(models, models_dir, space, args.dask_n, screen, workdir, chunk)
        )
        fair = None if args.skip_fairness else fairness(models_dir, workdir, args.requests)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    top = statistics.mean(ceilings)
    print(f"iBRNet screening benchmark — {available_cpus()} CPUs, {threads} ORT threads, chunk {chunk}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    print(f"model: {model_label}; space {CHEMSYS}, max_atoms {MAX_ATOMS} ({space.count():,} compositions)")
    print()
    print(f"{'measurement':<58} {'per second':>12} {'ratio':>22}")
    print(f"{'model-only ORT (ceiling), mean of before/after':<58} {top:>12,.0f} {'1.00 of ceiling':>22}")
    label = f"end to end, {args.n:,} compositions -> Parquet"
    print(f"{label:<58} {e2e:>12,.0f} {e2e / top:>8.2f} of ceiling (>=0.60)")
    print(
        f"  ceiling runs: {', '.join(f'{c:,.0f}' for c in ceilings)}; result file {out_size / 2**20:.1f} MiB"
    )
    stages = ", ".join(f"{stage} {us:.1f}" for stage, us in breakdown.items())
    print(f"  microseconds per composition by stage ({sample:,}-row sample): {stages}")
    share = breakdown["ORT"] / sum(breakdown.values())
    print(f"  ORT's share of the per-composition time in that sample (load-independent ratio): {share:.2f}")
    if dask is not None:
        print()
        print(f"{'Dask LocalCluster, ' + f'{args.dask_n:,} compositions':<58} {'per second':>12}")
        for workers, rate in dask.items():
            print(f"{f'  {workers} worker(s), 1 ORT thread each':<58} {rate:>12,.0f}")
        print(f"  speed-up 1 -> 2 workers: {dask[2] / dask[1]:.2f}x; for scale, ORT alone with 1 thread "
              f"{one_thread:,.0f}/s vs {threads} threads {top:,.0f}/s ({top / one_thread:.2f}x)")  # fmt: skip
    if fair is not None:
        print()
        print(f"{'POST /predict, concurrency 8':<44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'job/s':>8}")
        rows = [
            ("idle server", fair["idle"], None),
            ("while a job runs (runner at nice 10)", fair["busy_10"], fair["busy_rate_10"]),
            ("idle again (job cancelled)", fair["idle_after"], None),
            ("while a job runs (runner at nice 0)", fair["busy_0"], fair["busy_rate_0"]),
        ]
        for label, result, rate in rows:
            job = "" if rate is None else f"{rate:,.0f}"
            print(f"{label:<44} {result.throughput:>8,.0f} {result.percentile_ms(50):>8.2f} "
                  f"{result.percentile_ms(99):>8.2f} {job:>8}")  # fmt: skip
        idle99 = statistics.mean(fair[name].percentile_ms(99) for name in ("idle", "idle_after"))
        ratio10, ratio0 = (fair[f"busy_{n}"].percentile_ms(99) / idle99 for n in (10, 0))
        print(
            f"  p99 with a job / mean idle p99: {ratio10:.2f}x at nice 10 (default), {ratio0:.2f}x at nice 0"
        )
        print(f"  the job alone (no /predict load): {fair['alone_rate_10']:,.0f} compositions/s at nice 10, "
              f"{fair['alone_rate_0']:,.0f} at nice 0 (1 ORT thread, chunks of 1024)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
