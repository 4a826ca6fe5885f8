"""Serving benchmark: the HTTP service against its own ceilings, all figures from one run.

    python benchmarks/serve.py [--formulas 10000] [--requests 6000]
    python benchmarks/serve.py --previous HEAD~1      # the model set against a previous one

Measures, on this machine:
1. model-only ONNX Runtime throughput: featurized rows through the session, in BATCH_MAX_SIZE
   chunks, same thread settings as the server (the ceiling);
2. POST /predict/batch with 10,000 distinct real OQMD formulas, cold cache and warm cache;
3. single-formula POST /predict throughput and p50/p99 latency at concurrency 1 and 64 (distinct
   formulas, so every request is a cache miss that runs the model), next to GET /health at the
   same concurrency (the HTTP stack's own ceiling), plus a warm-cache /predict run;
4. the mean achieved batch size during the concurrency-64 run (from /metrics);
5. a naive baseline: PyTorch, one forward pass per request (parse, featurize, forward).

The server is `ibrnet serve` (uvicorn, uvloop, httptools) in a subprocess with a fresh SQLite
cache. The model is the shipped one when models/ has one, else a freshly initialised iBRNet
(the real 4.5M-parameter network; an untrained network costs exactly what a trained one does).

Load generation: /predict/batch is posted with httpx. The single-request runs use a minimal
keep-alive HTTP/1.1 client over asyncio (one connection per concurrent user, like wrk):
client and server share this machine's cores, and a heavier client would cap /health and make
/predict's ratio look better than it is.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.inference.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    Architecture,
    DatasetInfo,
    FeatureSpec,
    ModelManifest,
    SplitMetrics,
    TrainingInfo,
    file_sha256,
)
from app.inference.registry import ModelRegistry
from app.settings import REPOSITORY_MODELS_DIR, Settings, available_cpus
from training.data import ensure_wheel

OQMD = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/{split}.csv"


# --- inputs -------------------------------------------------------------------------------------


def oqmd_formulas(split: str, count: int, offset: int = 0) -> list[str]:
    with zipfile.ZipFile(ensure_wheel()) as wheel, wheel.open(OQMD.format(split=split)) as handle:
        rows = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8"))
        formulas = [row["formula"] for row in rows]
    chosen = formulas[offset : offset + count]
    if len(chosen) < count:
        raise SystemExit(f"{split} split has only {len(formulas) - offset} formulas after offset {offset}")
    return chosen


# One model, so that every figure is per model call: a request without "properties" asks every
# loaded model, and the ceiling is one model's.
BENCHMARK_MODEL = "oqmd-formation-enthalpy"


def models_for_benchmark(workdir: Path) -> tuple[Path, str]:
    """A folder with the shipped formation-enthalpy model when there is one, else with a fresh iBRNet."""
    shipped = REPOSITORY_MODELS_DIR / BENCHMARK_MODEL
    if (shipped / MANIFEST_FILE).is_file():
        shutil.copytree(shipped, workdir / "models" / BENCHMARK_MODEL)
        return workdir / "models", f"shipped models/{BENCHMARK_MODEL}"
    import torch

    from training.export import write_onnx
    from training.nets import IBRNet, NetConfig, count_parameters

    torch.manual_seed(0)
    config = NetConfig()
    network = IBRNet(config).eval()
    folder = workdir / "models" / "ibrnet-untrained"
    folder.mkdir(parents=True)
    write_onnx(network, config.input_width, folder / ONNX_FILE)
    featurizer = get_featurizer("ef")
    ModelManifest(
        name="ibrnet-untrained",
        property="formation_enthalpy",
        unit="eV/atom",
        description="freshly initialised iBRNet for benchmarking (same cost as a trained one)",
        features=FeatureSpec(
            spec="ef", version=featurizer.version, width=featurizer.width, elements=list(featurizer.labels)
        ),
        architecture=Architecture(
            name="ibrnet", parameters=count_parameters(network), config=config.to_dict()
        ),
        dataset=DatasetInfo(name="none", source="benchmarks/serve.py", sizes={}, sha256={}),
        metrics={"test": SplitMetrics(mae=float("nan"), rmse=float("nan"), r2=float("nan"), n=0)},
        training=TrainingInfo(command="benchmarks/serve.py", seed=0),
        onnx_sha256=file_sha256(folder / ONNX_FILE),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    ).save(folder)
    return folder.parent, f"fresh iBRNet ({count_parameters(network):,} parameters)"


# --- 1. the ceiling, and 5. the naive baseline -----------------------------------------------------


def model_only_throughput(
    models_dir: Path, formulas: list[str], settings: Settings, batch: int | None = None
) -> tuple[float, str, float]:
    """Rows per second, the provider, and CPU microseconds per row (all threads of this process),
    in ORT calls of ``batch`` rows (default BATCH_MAX_SIZE: the best case)."""
    registry = ModelRegistry.load(
        models_dir,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
        warmup_rows=settings.batch_max_size,
    )
    model = registry.models[0]
    features = model.featurizer.transform([parse_formula(f) for f in formulas])
    size = batch or settings.batch_max_size
    rates = []
    cpu_started = time.process_time()
    for _ in range(3):
        started = time.perf_counter()
        for start in range(0, len(features), size):
            model.run(features[start : start + size])
        rates.append(len(features) / (time.perf_counter() - started))
    cpu_us = (time.process_time() - cpu_started) / (3 * len(features)) * 1e6
    return statistics.median(rates), model.provider, cpu_us


def served_network(architecture: Architecture, kind: str, members: int) -> Any:
    """The PyTorch network a model file computes, untrained: an ensemble's members (each its own
    architecture where they differ), a student's one network with heads, or one network."""
    from training.nets import Ensemble, NetConfig, build_network

    if architecture.members:
        return Ensemble([build_network(NetConfig.from_dict(record)) for record in architecture.members])
    single = kind != "ensemble" or architecture.config.get("heads", 1) > 1
    copies = 1 if single else members
    networks = [build_network(NetConfig.from_dict(architecture.config)) for _ in range(copies)]
    return networks[0] if single else Ensemble(networks)


def naive_torch_throughput(models_dir: Path, formulas: list[str]) -> float:
    """One request = parse + featurize + one PyTorch forward pass on a batch of one, in-process
    (no HTTP: an upper bound for a naive server). One torch thread: its best setting for
    batches of one here (two threads on two shared cores spin against each other, 50x slower)."""
    import torch

    torch.set_num_threads(1)
    (manifest_path,) = models_dir.glob(f"*/{MANIFEST_FILE}")
    manifest = ModelManifest.load(manifest_path.parent)
    features = manifest.features
    # the served networks (architecture, input width, members or heads) and featurizer: its cost
    network = served_network(manifest.architecture, manifest.output.kind, manifest.output.members).eval()
    featurizer = get_featurizer(features.spec)
    with torch.inference_mode():
        network(torch.zeros(1, features.width))
        started = time.perf_counter()
        for formula in formulas:
            x = torch.from_numpy(featurizer.transform([parse_formula(formula)]))
            float(network(x)[0, 0])
    return len(formulas) / (time.perf_counter() - started)


# --- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self, models_dir: Path, database_url: str, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--models", str(models_dir),
             "--database-url", database_url],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def wait_for_cache_writes(self) -> None:
        deadline = time.monotonic() + 120
        while httpx.get(f"{self.base}/ready", timeout=10).json()["pending_cache_writes"] > 0:
            if time.monotonic() > deadline:
                raise SystemExit("cache writes did not finish")
            time.sleep(0.1)

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far, all threads (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# --- 2. the batch endpoint ---------------------------------------------------------------------------


def post_batch(server: Server, formulas: list[str]) -> tuple[float, int, float]:
    """Seconds for one /predict/batch round trip (request sent to answer parsed), answers from the
    cache, and server CPU microseconds per formula (cache writes included)."""
    cpu_started = server.cpu_seconds()
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        response = client.post(f"{server.base}/predict/batch", json={"formulas": formulas})
        results = response.json()["results"]
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    if len(results) != len(formulas) or any("error" in item for item in results):
        raise SystemExit("the batch answer is incomplete or has errors")
    cached = sum(all(p["cached"] for p in item["predictions"].values()) for item in results)
    server.wait_for_cache_writes()
    return elapsed, cached, (server.cpu_seconds() - cpu_started) / len(formulas) * 1e6


# --- 3. single requests: a minimal keep-alive HTTP/1.1 load generator ------------------------------


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_s: list[float]
    cached: int
    server_cpu_us: float = float("nan")  # server CPU time per request, all threads
    client_cpu_us: float = float("nan")  # the load generator's own CPU time per request

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000)


async def _load(port: int, requests: list[bytes], concurrency: int) -> LoadResult:
    queue = iter(requests)
    latencies: list[float] = []
    cached = 0

    async def user() -> None:
        nonlocal cached
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {body[:300]!r}")
                cached += body.count(b'"cached":true')
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return LoadResult(len(requests), time.perf_counter() - started, latencies, cached)


def run_load(server: Server, requests: list[bytes], concurrency: int) -> LoadResult:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    cpu_started, client_started = server.cpu_seconds(), time.process_time()
    result = run(_load(server.port, requests, concurrency))
    result.server_cpu_us = (server.cpu_seconds() - cpu_started) / len(requests) * 1e6
    result.client_cpu_us = (time.process_time() - client_started) / len(requests) * 1e6
    return result


def predict_requests(formulas: list[str]) -> list[bytes]:
    out = []
    for formula in formulas:
        body = json.dumps({"formula": formula}).encode()
        out.append(
            b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return out


def health_requests(count: int) -> list[bytes]:
    return [b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"] * count


# --- the run ------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_cpu_budget(
    health: list[LoadResult], predict: list[LoadResult], health_rate: float, ort_cpu_us: float, batch: int
) -> None:
    """Why cold /predict at c=64 lands where it does: the load generator, the server and ORT share
    this machine's CPUs, and each request's CPU time was measured in this run."""
    cpus = available_cpus()
    client = median([r.client_cpu_us for r in predict])
    server = median([r.server_cpu_us for r in predict])
    health_cost = median([r.client_cpu_us for r in health]) + median([r.server_cpu_us for r in health])
    target = 0.5 * health_rate
    most = cpus / ((client + server) * 1e-6)
    print(f"CPU budget at concurrency 64 ({cpus} CPUs shared by the load generator and the server):")
    print(f"  CPU per cold /predict: load generator {client:.0f} us + server {server:.0f} us "
          f"(/health: {health_cost:.0f} us in all)")  # fmt: skip
    print(f"  at that cost these CPUs serve at most {most:,.0f} req/s = {most / health_rate:.2f} of /health")
    ort_cpus = target * ort_cpu_us * 1e-6
    print(f"  the 0.50 target is {target:,.0f} req/s; ORT alone at its cheapest (1 thread, calls of {batch} "
          f"rows) takes {ort_cpu_us:.0f} us per row = {ort_cpus:.2f} CPUs at that rate,")  # fmt: skip
    left_us = (cpus - ort_cpus) / target * 1e6
    print(f"  leaving {left_us:.0f} us per request for everything else (/health alone: {health_cost:.0f} us)")


def compare_sets(previous: str, args: argparse.Namespace) -> int:
    import model_sets  # benchmarks/model_sets.py (this script's folder is on sys.path)

    """Every model of the new set (models/) against the previous set, each served whole, in
    interleaved rounds: cold /predict at concurrency 64 (every property, every request a miss) next
    to /health, and a cold /predict/batch; printed as ratios new / previous."""
    workdir = Path(tempfile.mkdtemp(prefix="ibrnet-bench-sets-"))
    try:
        sets = model_sets.new_and_previous(previous, workdir)
        figures: dict[str, dict[str, list[float]]] = {name: {} for name in sets}
        for round_ in range(max(1, args.rounds)):
            c64 = oqmd_formulas("train", args.requests, offset=round_ * args.requests)
            batch = oqmd_formulas("test", args.formulas, offset=round_ * args.formulas)
            for name, (models_dir, _) in sets.items():
                server = Server(models_dir, f"sqlite:///{workdir / f'{name}-{round_}.db'}", workdir)
                try:
                    health = run_load(server, health_requests(args.requests * 2), 64)
                    predict = run_load(server, predict_requests(c64), 64)
                    seconds, _, _ = post_batch(server, batch)
                finally:
                    server.stop()
                got = figures[name]
                got.setdefault("health", []).append(health.throughput)
                got.setdefault("predict", []).append(predict.throughput)
                got.setdefault("p99", []).append(predict.percentile_ms(99))
                got.setdefault("batch", []).append(len(batch) / seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    new, old = ({k: median(v) for k, v in figures[name].items()} for name in ("new", "previous"))
    print()
    print(f"every property per request; medians of {max(1, args.rounds)} interleaved rounds")
    print(f"{'measurement':<44} {'new':>10} {'previous':>10} {'new/prev':>9}")
    for key, label in (("predict", "cold /predict, c=64, req/s"), ("health", "GET /health, c=64, req/s"),
                       ("p99", "cold /predict, c=64, p99 ms"),
                       ("batch", f"cold /predict/batch ({args.formulas}), formulas/s")):  # fmt: skip
        print(f"{label:<44} {new[key]:>10,.1f} {old[key]:>10,.1f} {new[key] / old[key]:>9.2f}")
    ratios = [new["predict"] / new["health"], old["predict"] / old["health"]]
    print(f"{'cold /predict vs /health at c=64':<44} {ratios[0]:>10.2f} {ratios[1]:>10.2f} "
          f"{ratios[0] / ratios[1]:>9.2f}   (target >= 0.50, p99 <= 50 ms)")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formulas", type=int, default=10_000, help="batch size for /predict/batch")
    parser.add_argument(
        "--requests", type=int, default=6_000, help="single requests per run at concurrency 64"
    )
    parser.add_argument("--requests-c1", type=int, default=1_000, help="single requests at concurrency 1")
    parser.add_argument("--naive", type=int, default=1_000, help="requests for the PyTorch baseline")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of each HTTP measurement")
    parser.add_argument(
        "--previous",
        metavar="REV_OR_DIR",
        help="instead: serve the whole model set (models/) against a previous one (a git revision of "
        "models/, or a folder), every property per request, and print the ratios",
    )
    args = parser.parse_args()
    if args.previous:
        return compare_sets(args.previous, args)

    workdir = Path(tempfile.mkdtemp(prefix="ibrnet-bench-"))
    settings = Settings()
    load_before = os.getloadavg()
    rounds = max(1, args.rounds)
    try:
        models_dir, model_label = models_for_benchmark(workdir)
        # Distinct compositions everywhere, so "cold" really computes every prediction.
        batch_sets = [oqmd_formulas("test", args.formulas, offset=i * args.formulas) for i in range(rounds)]
        c1_formulas = oqmd_formulas("train", args.requests_c1)
        c64_sets = [
            oqmd_formulas("train", args.requests, offset=args.requests_c1 + i * args.requests)
            for i in range(rounds)
        ]

        # The machine is shared: every measurement is repeated, interleaved with the ones it is
        # compared with, and reported as a median.
        ceilings: list[float] = []
        cold_rates: list[float] = []
        warm_rates: list[float] = []
        cold_cached = warm_cached = 0
        ceiling_cpu: list[float] = []  # CPU microseconds per row / per formula
        cold_cpu: list[float] = []
        health_c64: list[LoadResult] = []
        predict_c64: list[LoadResult] = []
        batch_calls = batch_rows = 0.0

        ceiling, provider, cpu_us = model_only_throughput(models_dir, batch_sets[0], settings)
        ceilings.append(ceiling)
        ceiling_cpu.append(cpu_us)
        server = Server(models_dir, f"sqlite:///{workdir / 'cache.db'}", workdir)
        try:
            for formulas in batch_sets:
                seconds, cached, cpu_us = post_batch(server, formulas)
                cold_rates.append(len(formulas) / seconds)
                cold_cached += cached
                cold_cpu.append(cpu_us)
                seconds, cached, _ = post_batch(server, formulas)
                warm_rates.append(len(formulas) / seconds)
                warm_cached += cached
                ceiling, _, cpu_us = model_only_throughput(models_dir, formulas, settings)
                ceilings.append(ceiling)
                ceiling_cpu.append(cpu_us)

            health_c1 = run_load(server, health_requests(args.requests_c1 * 2), 1)
            predict_c1 = run_load(server, predict_requests(c1_formulas), 1)
            for formulas in c64_sets:
                health_c64.append(run_load(server, health_requests(args.requests * 2), 64))
                before = server.metrics()
                predict_c64.append(run_load(server, predict_requests(formulas), 64))
                after = server.metrics()
                batch_calls += metric_sum(after, "ibrnet_batch_size_count") - metric_sum(
                    before, "ibrnet_batch_size_count"
                )
                batch_rows += metric_sum(after, "ibrnet_batch_size_sum") - metric_sum(
                    before, "ibrnet_batch_size_sum"
                )
            server.wait_for_cache_writes()
            predict_c64_warm = run_load(server, predict_requests(c64_sets[0]), 64)
        finally:
            server.stop()
        # What ORT alone costs per row in calls of the size the batcher achieved at c=64, at its
        # most CPU-efficient setting (one thread: no hand-offs between threads).
        achieved = max(1, round(batch_rows / batch_calls)) if batch_calls else 1
        one_thread = settings.model_copy(update={"intra_op_threads": 1})
        _, _, ort_cpu_us = model_only_throughput(models_dir, c64_sets[0][:2048], one_thread, achieved)
        naive = naive_torch_throughput(models_dir, c1_formulas[: args.naive])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    ceiling, cold, warm = median(ceilings), median(cold_rates), median(warm_rates)
    predict64 = median([r.throughput for r in predict_c64])
    health64 = median([r.throughput for r in health_c64])
    p99_64 = median([r.percentile_ms(99) for r in predict_c64])
    print(f"iBRNet serving benchmark — {os.cpu_count()} CPUs, {settings.intra_op_threads} ORT threads, "
          f"BATCH_MAX_SIZE={settings.batch_max_size}, BATCH_MAX_WAIT_MS={settings.batch_max_wait_ms}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    print(f"model: {model_label}, provider {provider}; medians of {rounds} interleaved rounds")
    print()
    print(f"{'measurement':<48} {'per second':>12} {'ratio':>24}")
    print(f"{'model-only ORT (ceiling)':<48} {ceiling:>12,.0f} {'1.00 of ceiling':>24}")
    print(f"{'/predict/batch, ' + str(args.formulas) + ' formulas, cold cache':<48} {cold:>12,.0f} "
          f"{cold / ceiling:>8.2f} of ceiling (>=0.70)")  # fmt: skip
    print(f"{'/predict/batch, ' + str(args.formulas) + ' formulas, warm cache':<48} {warm:>12,.0f} "
          f"{warm / ceiling:>8.2f} of ceiling")  # fmt: skip
    print(
        f"  each run: ceiling {', '.join(f'{c:,.0f}' for c in ceilings)}; "
        f"cold {', '.join(f'{c:,.0f}' for c in cold_rates)}; "
        f"warm {', '.join(f'{c:,.0f}' for c in warm_rates)}"
    )
    print(
        f"  answers from cache: cold runs {cold_cached}, warm runs {warm_cached} of {args.formulas * rounds}"
    )
    print(
        f"  server CPU per formula (load-independent): ORT alone {median(ceiling_cpu):.0f} us, "
        f"cold /predict/batch {median(cold_cpu):.0f} us (parse, cache, ORT, writes): "
        f"{median(ceiling_cpu) / median(cold_cpu):.2f} of the ceiling by CPU"
    )
    print()
    print(
        f"{'single requests':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs /health':>11} {'CPU us':>8}"
    )
    rows = [
        ("GET /health, concurrency 1", [health_c1], None),
        ("POST /predict, concurrency 1", [predict_c1], [health_c1]),
        ("GET /health, concurrency 64", health_c64, None),
        ("POST /predict, concurrency 64", predict_c64, health_c64),
        ("POST /predict, c=64, warm cache", [predict_c64_warm], health_c64),
    ]
    for label, results, reference in rows:
        rate = median([r.throughput for r in results])
        ratio = f"{rate / median([r.throughput for r in reference]):.2f}" if reference else "1.00"
        p50 = median([r.percentile_ms(50) for r in results])
        p99 = median([r.percentile_ms(99) for r in results])
        cpu_us = median([r.server_cpu_us for r in results])
        print(f"{label:<34} {rate:>9,.0f} {p50:>8.2f} {p99:>8.2f} {ratio:>11} {cpu_us:>8.0f}")
    print(
        f"  each c=64 run: /health {', '.join(f'{r.throughput:,.0f}' for r in health_c64)}; "
        "/predict "
        + ", ".join(f"{r.throughput:,.0f} (p99 {r.percentile_ms(99):.0f} ms)" for r in predict_c64)
    )
    health_cpu = median([r.server_cpu_us for r in health_c64])
    predict_cpu = median([r.server_cpu_us for r in predict_c64])
    print(
        f"  server CPU per request at c=64: /health {health_cpu:.0f} us, /predict {predict_cpu:.0f} us "
        f"(CPU column: server process, all threads, per request)"
    )
    print(f"  targets at concurrency 64: /predict >= 0.50 of /health (got {predict64 / health64:.2f}), "
          f"p99 <= 50 ms (got {p99_64:.1f})")  # fmt: skip
    print(f"  cold /predict answers from cache: {predict_c1.cached + sum(r.cached for r in predict_c64)}; "
          f"warm run: {predict_c64_warm.cached} of {predict_c64_warm.requests}")  # fmt: skip
    print(f"mean achieved batch size at concurrency 64: {batch_rows / batch_calls:.1f} rows per ORT call "
          f"({batch_rows:.0f} rows in {batch_calls:.0f} calls)")  # fmt: skip
    print_cpu_budget(health_c64, predict_c64, health64, ort_cpu_us, achieved)
    print()
    print(f"{'naive baseline: PyTorch, one forward pass per request':<56} {naive:>9,.0f} req/s")
    print(f"  service /predict at concurrency 64 vs naive: {predict64 / naive:.1f}x; "
          f"/predict/batch cold vs naive: {cold / naive:.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
