"""Batch screening outside the service: in this process, or partitioned over a Dask cluster.

A partition is a row range of the screen. For an enumeration the worker regenerates its own
range (only five numbers travel); for formulas the slice travels. Workers featurize and predict
their partitions themselves and send back result tables already filtered and, with top_k, cut to
their own best top_k. Each worker process loads the models (opens its ONNX Runtime sessions)
once and keeps them in a module-level cache for every later partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.inference.manifest import StabilityCalibration
from app.inference.registry import ModelRegistry
from app.screening.compute import ScreenModels, passes_filters, rank_within
from app.screening.enumerate import ChemicalSpace
from app.screening.io import ResultWriter, chunk_table, format_of, result_schema
from app.screening.sources import EnumerationSource, FileSource, FormulaSource, Source
from app.screening.spec import ScreenRequest
from app.settings import available_cpus
from app.stability.assess import StabilityAssessor
from app.stability.reference import load_reference

logger = logging.getLogger(__name__)

# Partitions queued on the cluster per worker: enough to keep every worker busy while results
# travel back, few enough that client memory stays at a handful of partitions.
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class ModelSpec:
    """How a worker opens the screen's models, and which versions it must find."""

    models_dir: str
    properties: tuple[str, ...]
    # (property, answer version: the file, the chemistry, the output rules and the training
    # domain): workers must load the same files and answer by the same rules
    versions: tuple[tuple[str, str], ...]
    device: str = "cpu"
    intra_op_threads: int | None = None  # None: the worker's CPUs shared by its task threads
    prefer_int8_on_cpu: bool = False
    max_formula_length: int = 256
    # e_above_hull: the hull reference the workers load ("" = the shipped one), None = no stability,
    # and its sha256: a worker with another file under that path refuses instead of ranking on it
    hull_reference: str | None = None
    hull_reference_sha256: str | None = None
    # p_stable's curve as the client read it (knots, values), used by every worker as it is: a
    # worker's own model.json could hold another curve for the same ONNX file
    p_stable_curve: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def of(cls, models: ScreenModels, models_dir: Path, **options: Any) -> ModelSpec:
        versions = tuple((model.property, model.answer_version) for model in models.models)
        if models.stability is not None:
            options.setdefault("hull_reference", "")
            options["hull_reference_sha256"] = models.stability.reference.sha256
            curve = models.stability.calibration
            if curve is not None:
                options["p_stable_curve"] = (tuple(curve.gaussian), tuple(curve.observed))
        return cls(str(models_dir), tuple(models.properties), versions, **options)


@dataclass(frozen=True)
class Partition:
    index: int
    start: int  # first row (global index)
    stop: int
    space: ChemicalSpace | None = None  # an enumeration: the worker generates rows start:stop
    formulas: tuple[str, ...] | None = None  # a formula list: exactly rows start:stop

    @property
    def rows(self) -> int:
        return self.stop - self.start


# -- on the worker ------------------------------------------------------------------------------

_MODELS: dict[ModelSpec, ScreenModels] = {}
_MODELS_LOCK = threading.Lock()
_LOADS = 0  # registry loads in this process: a test checks it stays at one per worker


def worker_models(spec: ModelSpec) -> ScreenModels:
    """This process's models for ``spec``, loaded (ORT sessions opened) on first use only."""
    global _LOADS
    with _MODELS_LOCK:
        if spec not in _MODELS:
            registry = ModelRegistry.load(
                Path(spec.models_dir),
                device=spec.device,
                intra_op_threads=spec.intra_op_threads or _worker_threads(),
                prefer_int8_on_cpu=spec.prefer_int8_on_cpu,
                warmup_rows=64,
            )
            stability = None
            if spec.hull_reference is not None:
                reference = load_reference(Path(spec.hull_reference) if spec.hull_reference else None)
                if reference.sha256 != spec.hull_reference_sha256:
                    raise RuntimeError(
                        f"the hull reference {spec.hull_reference or 'shipped'} on this worker has sha256 "
                        f"{reference.sha256[:12]}, the client's {str(spec.hull_reference_sha256)[:12]}: "
                        "give every worker the same file (an absolute path)"
                    )
                curve = spec.p_stable_curve
                calibration = (
                    StabilityCalibration(gaussian=list(curve[0]), observed=list(curve[1])) if curve else None
                )
                stability = StabilityAssessor(reference, calibration=calibration)
            models = ScreenModels.from_registry(registry, spec.properties, spec.max_formula_length, stability)
            found = tuple((model.property, model.answer_version) for model in models.models)
            if found != spec.versions:
                raise RuntimeError(
                    f"models in {spec.models_dir} on this worker are {found}, the client expects "
                    f"{spec.versions}: give every worker the same model files"
                )
            _MODELS[spec] = models
            _LOADS += 1
        return _MODELS[spec]


def seed_models(spec: ModelSpec, models: ScreenModels) -> None:
    """Reuse models this process already loaded (the CLI's, for a run without Dask)."""
    with _MODELS_LOCK:
        _MODELS.setdefault(spec, models)


def model_loads() -> int:
    return _LOADS


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        task_threads = get_worker().state.nthreads
    except (ImportError, ValueError):  # not on a Dask worker
        task_threads = 1
    return max(1, available_cpus() // task_threads)


def screen_partition(spec: ModelSpec, request: dict[str, Any], part: Partition, chunk_size: int) -> pa.Table:
    """Featurize, predict, filter and (with top_k) cut one partition; runs on a worker."""
    models = worker_models(spec)
    screen = ScreenRequest.model_validate(request)
    source: Source
    if part.space is not None:
        source, start, stop = EnumerationSource(part.space), part.start, part.stop
    else:
        source, start, stop = FormulaSource(part.formulas or (), part.start), 0, part.rows
    tables = [
        chunk_table(rank_within(chunk.take(passes_filters(chunk, screen)), screen), models.properties)
        for chunk in source.results(models, start, stop, chunk_size)
    ]
    table = pa.concat_tables(tables) if tables else result_schema(models.properties).empty_table()
    return _ranked(table, screen) if screen.top_k is not None else table


def _ranked(table: pa.Table, screen: ScreenRequest) -> pa.Table:
    if screen.sort_by is None:
        return table
    order = "ascending" if screen.ascending else "descending"
    ranked = table.filter(table[screen.sort_by].is_valid()) if screen.top_k is not None else table
    ranked = ranked.sort_by([(screen.sort_by, order), ("index", "ascending")])
    return ranked.slice(0, screen.top_k) if screen.top_k is not None else ranked


# -- on the client ------------------------------------------------------------------------------


def partitions(source: Source, size: int) -> Iterator[Partition]:
    if isinstance(source, EnumerationSource):
        total = source.total
        for index, start in enumerate(range(0, total, size)):
            yield Partition(index, start, min(start + size, total), space=source.space)
        return
    slices = source.batches(size) if isinstance(source, FileSource) else _slices(source, size)
    for index, part in enumerate(slices):
        yield Partition(index, part.first_row, part.first_row + part.total, formulas=tuple(part.formulas))


def _slices(source: FormulaSource, size: int) -> Iterator[FormulaSource]:
    for start in range(0, source.total, size):
        yield FormulaSource(source.formulas[start : start + size], source.first_row + start)


class ResultSink:
    """Writes partition results as they arrive: in input order, or ranked once all are in."""

    def __init__(self, path: Path, properties: list[str], screen: ScreenRequest) -> None:
        self.screen = screen
        self._writer = ResultWriter(path, properties, format_of(str(path)))
        self._waiting: dict[int, pa.Table] = {}  # unsorted: partitions that arrived early
        self._next = 0
        self._kept: list[pa.Table] = []  # sorted: everything (or the running top_k)
        self._kept_rows = 0

    def add(self, index: int, table: pa.Table) -> None:
        if self.screen.sort_by is None:
            self._waiting[index] = table
            while self._next in self._waiting:
                self._writer.write(self._waiting.pop(self._next))
                self._next += 1
            return
        self._kept.append(table)
        self._kept_rows += table.num_rows
        if self.screen.top_k is not None and self._kept_rows > 4 * self.screen.top_k:
            merged = _ranked(pa.concat_tables(self._kept), self.screen)  # keep memory at O(top_k)
            self._kept, self._kept_rows = [merged], merged.num_rows

    def abort(self) -> None:
        """Stop on a failure: close the file with what was written in order, rank nothing."""
        self._writer.close()

    def close(self) -> int:
        if self.screen.sort_by is not None and self._kept:
            self._writer.write(_ranked(pa.concat_tables(self._kept), self.screen))
        self._writer.close()
        return self._writer.rows


@dataclass
class ScreenSummary:
    rows_in: int
    rows_out: int
    seconds: float
    workers: int
    partitions: int = 0

    @property
    def rate(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else float("inf")


def run_screen(
    source: Source,
    screen: ScreenRequest,
    spec: ModelSpec,
    out: Path,
    *,
    dask: str | None = None,
    partition_size: int = 50_000,
    chunk_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> ScreenSummary:
    """Screen ``source`` into ``out`` locally (dask=None) or on a Dask cluster ("local:N" or an address)."""
    request = screen.model_dump(mode="json")
    sink = ResultSink(out, list(spec.properties), screen)
    started = time.perf_counter()
    rows_in = count = 0
    try:
        if dask is None:
            for part in partitions(source, partition_size):
                sink.add(part.index, screen_partition(spec, request, part, chunk_size))
                rows_in += part.rows
                count += 1
                if progress:
                    progress(part.rows)
            workers = 1
        else:
            rows_in, count, workers = _run_on_dask(
                dask, source, request, spec, sink, partition_size, chunk_size, progress
            )
    except BaseException:
        sink.abort()
        raise
    rows_out = sink.close()
    return ScreenSummary(rows_in, rows_out, time.perf_counter() - started, workers, count)


def _run_on_dask(
    address: str,
    source: Source,
    request: dict[str, Any],
    spec: ModelSpec,
    sink: ResultSink,
    partition_size: int,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[int, int, int]:
    from distributed import as_completed

    client, cluster = connect(address)
    try:
        workers = len(client.scheduler_info().get("workers", {})) or 1
        pending = partitions(source, partition_size)
        rows_in = count = 0
        futures = as_completed()
        sizes: dict[str, tuple[int, int]] = {}

        def submit_next() -> bool:
            part = next(pending, None)
            if part is None:
                return False
            future = client.submit(screen_partition, spec, request, part, chunk_size, pure=False)
            sizes[future.key] = (part.index, part.rows)
            futures.add(future)
            return True

        for _ in range(IN_FLIGHT_PER_WORKER * workers):
            if not submit_next():
                break
        for future in futures:
            table = future.result()
            index, rows = sizes.pop(future.key)
            sink.add(index, table)
            rows_in += rows
            count += 1
            if progress:
                progress(rows)
            submit_next()
        return rows_in, count, workers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def connect(address: str) -> tuple[Any, Any]:
    """A Dask client for "local:N" (a LocalCluster of N single-threaded worker processes) or an address."""
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        try:
            n_workers = int(address.removeprefix("local:"))
        except ValueError:
            raise ValueError(f"--dask local:N needs a number of workers, got {address!r}") from None
        # Processes, one thread each: ORT and numpy release the GIL, but featurization does not.
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    return Client(address), None
