"""The in-service job runner: one background thread that works through queued screens.

Fair to interactive traffic: it runs its own ONNX Runtime sessions with fewer intra-op threads
than the service's (IBRNET_SCREEN_INTRA_OP_THREADS, default half), works in small chunks
(IBRNET_SCREEN_CHUNK_SIZE) and can pause between them (IBRNET_SCREEN_CHUNK_PAUSE_MS). ORT and
SQLite release the GIL, so the event loop keeps answering /predict while a chunk runs.

Durable: each chunk's rows are committed with the progress in one transaction (JobStore.
commit_chunk); after a crash the job is claimed again once its lease runs out and resumes at the
committed progress. A graceful stop hands the job back to the queue at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from app.errors import DomainError
from app.inference.registry import ModelRegistry
from app.screening.compute import HULL_ERROR, OUTSIDE, ChunkResult, ScreenModels, passes_filters, rank_within
from app.screening.sources import Source, source_for
from app.screening.spec import ScreenRequest
from app.settings import Settings
from app.stability.assess import E_ABOVE_HULL, StabilityAssessor
from app.store.database import StoreFull, StoreUnavailable
from app.store.jobs import FAILED, SUCCEEDED, Job, JobStore, Ranking

logger = logging.getLogger(__name__)

# How often an idle runner looks for work that other processes queued (its own submissions wake
# it at once) and for jobs whose runner died.
IDLE_POLL_S = 1.0
# How often stopped jobs past the retention period are looked for.
SWEEP_S = 600.0
# Chunks are sized to take about this long (app/screening/runner.py, _timed_chunks), from a first
# chunk of FIRST_CHUNK_ROWS, never under MIN_CHUNK_ROWS nor over IBRNET_SCREEN_CHUNK_SIZE.
CHUNK_TARGET_S = 1.0
FIRST_CHUNK_ROWS = 256
MIN_CHUNK_ROWS = 16
# Waits between attempts while the database is unreachable (doubling up to the last).
STORE_RETRY_S = (0.5, 1.0, 2.0, 5.0)
# A formula job with at least this many input rows keeps them decoded between its turns (_inputs).
KEEP_INPUTS_FROM_ROWS = 100_000


class ScreeningRunner:
    def __init__(
        self,
        jobs: JobStore,
        load_registry: Callable[[], ModelRegistry],
        *,
        chunk_size: int = 4096,
        lease_s: float = 30.0,
        pause_s: float = 0.0,
        max_formula_length: int = 256,
        nice: int = 10,
        stability: StabilityAssessor | None = None,
        retention_s: float = 0.0,
        slice_s: float = 0.0,
    ) -> None:
        self.slice_s = slice_s
        self.jobs = jobs
        self.stability = stability
        self.retention_s = retention_s
        self._next_sweep = 0.0
        self.chunk_size = chunk_size
        self.lease_s = lease_s
        self.pause_s = pause_s
        self.max_formula_length = max_formula_length
        self.nice = nice
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self.current_job: str | None = None
        self.last_error: str | None = None
        self._load_registry = load_registry
        self._registry: ModelRegistry | None = None
        self._kept_inputs: tuple[str, list[str]] | None = None  # (job id, its input formulas)
        self._turn_given = False  # the last job run gave its turn to another (it has turns left)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, jobs: JobStore, stability: StabilityAssessor | None = None
    ) -> ScreeningRunner:
        threads = settings.screen_intra_op_threads or max(1, settings.intra_op_threads // 2)

        def load() -> ModelRegistry:
            return ModelRegistry.load(
                settings.models_dir,
                device=settings.device,
                intra_op_threads=threads,
                prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
                warmup_rows=min(settings.screen_chunk_size, 1024),
            )

        return cls(
            jobs,
            load,
            chunk_size=settings.screen_chunk_size,
            lease_s=settings.screen_lease_s,
            pause_s=settings.screen_chunk_pause_ms / 1000.0,
            max_formula_length=settings.max_formula_length,
            nice=settings.screen_nice,
            stability=stability,
            retention_s=settings.screen_retention_hours * 3600.0,
            slice_s=settings.screen_slice_s,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="screening-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current chunk, hand the job back to the queue, and stop."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        _lower_priority(self.nice)
        failures = 0
        while not self._stopping.is_set():
            try:
                self._sweep()
                job = self.jobs.claim(self.owner, self.lease_s)
                failures = 0
            except StoreUnavailable as error:
                self.last_error = str(error)
                logger.warning("screening runner cannot reach the database: %s", error)
                self._stopping.wait(STORE_RETRY_S[min(failures, len(STORE_RETRY_S) - 1)])
                failures += 1
                continue
            if job is None:
                self._kept_inputs = None  # no job waits for a next turn (one cancelled while queued)
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self.current_job = job.id
            self._turn_given = False
            try:
                with self._heartbeat(job):  # from the claim on: loading the models can outlast a lease
                    self._run(job)
            except StoreUnavailable as error:  # only while stopping: the lease brings the job back
                logger.warning("screening job %s left to its lease: %s", job.id, error)
            except Exception:  # a bug must fail one job, never the runner
                logger.exception("screening job %s failed", job.id)
                self._finish(job, FAILED, "internal error; see the service log")
            finally:
                self.current_job = None
                kept = self._kept_inputs
                if kept is not None and kept[0] == job.id and not self._turn_given:
                    self._kept_inputs = None  # finished, cancelled, failed or taken over: no next turn

    def _run(self, job: Job) -> None:
        logger.info(
            "screening job %s: starting at row %d of %d (claim %d)", job.id, job.done, job.total, job.attempts
        )
        try:
            request = ScreenRequest.model_validate(job.request)
            models = self._models(job)
            formulas = self._inputs(job.id) if request.chemsys is None else None
            source = source_for(request, formulas, models.elements)
        except DomainError as error:
            self._finish(job, FAILED, f"{error.code}: {error.message}")
            return
        ranking = Ranking(request.ascending, request.top_k) if request.sort_by is not None else None
        self._run_chunks(job, request, models, source, ranking)

    def _inputs(self, job_id: str) -> list[str]:
        """A formula job's input rows. A big list is kept for the job's next turn: decoding 10M
        formulas took 1.4 s with the interpreter held (json.loads keeps the GIL), a stall for every
        request at each turn it took back from a small job; one list is kept, so memory stays at
        what the running job needs."""
        if self._kept_inputs is not None and self._kept_inputs[0] == job_id:
            return self._kept_inputs[1]
        formulas: list[str] = self._with_store(lambda: self.jobs.inputs(job_id))
        if len(formulas) >= KEEP_INPUTS_FROM_ROWS:
            self._kept_inputs = (job_id, formulas)
        return formulas

    @contextlib.contextmanager
    def _heartbeat(self, job: Job) -> Iterator[None]:
        """Renew the job's lease every third of it while it runs. Commits renew it too, but one
        chunk can outlast the lease (a chunk of new chemical systems, a slow database), and another
        worker would then take the job over and compute the same rows beside this one."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    renewed = self.jobs.renew(job.id, self.owner)
                    if not renewed:
                        return  # cancelled or no longer ours: the next commit says so too
                except Exception as error:  # an outage: the commit's retries deal with it
                    logger.warning("screening job %s: lease not renewed: %s", job.id, error)

        thread = threading.Thread(target=beat, name=f"lease-{job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(self.lease_s)  # a renew stuck on the database must not hold the runner

    def _run_chunks(
        self, job: Job, request: ScreenRequest, models: ScreenModels, source: Source, ranking: Ranking | None
    ) -> None:
        done = job.done
        turn_started = time.monotonic()
        for chunk in self._timed_chunks(source, models, done):
            rows = _store_rows(
                rank_within(chunk.take(passes_filters(chunk, request)), request), request.sort_by
            )
            new_done = done + len(chunk)
            try:
                committed = self._with_store(
                    lambda rows=rows, done=done, new_done=new_done: self.jobs.commit_chunk(
                        job.id, self.owner, done, new_done, rows, ranking
                    )
                )
            except StoreFull as error:
                self._out_of_space(job, done, error)
                return
            if not committed:  # cancelled (or, after a long outage, taken over by another runner)
                logger.info("screening job %s: stopped at row %d (no longer ours)", job.id, done)
                return
            done = new_done
            if self._stopping.is_set():
                self._with_store(lambda: self.jobs.release(job.id, self.owner))
                logger.info("screening job %s: handed back at row %d", job.id, done)
                return
            if self._turn_over(job, turn_started, done):
                return
            # Let the event loop's threads have the GIL and the CPU between chunks (a stop ends
            # the pause: the next chunk then hands the job back).
            self._stopping.wait(self.pause_s)
        self._finish(job, SUCCEEDED)
        logger.info("screening job %s: succeeded, %d rows", job.id, done)

    def _timed_chunks(self, source: Source, models: ScreenModels, start: int) -> Iterator[ChunkResult]:
        """The job's rows from ``start`` in chunks of at most chunk_size rows, each sized to take
        about CHUNK_TARGET_S (a quarter of the turn when turns are shorter).

        Why: turns are given between chunks, and a chunk's cost per row varies a thousandfold (a
        row of a cached chemical system costs microseconds, one of a new 7-element system a hull
        build): fixed 4,096-row chunks of new systems kept five small jobs waiting 54 s behind a
        10 s turn. The first chunk is small; each next one grows or shrinks with the last one's time.
        """
        target = CHUNK_TARGET_S if self.slice_s <= 0 else min(CHUNK_TARGET_S, self.slice_s / 4)
        size, row = min(self.chunk_size, FIRST_CHUNK_ROWS), start
        while row < source.total:
            started = time.monotonic()
            stop = min(row + size, source.total)
            (chunk,) = source.results(models, start=row, stop=stop, chunk_size=stop - row)
            size = next_chunk_size(size, time.monotonic() - started, target, self.chunk_size)
            row = stop
            yield chunk

    def _models(self, job: Job) -> ScreenModels:
        if self._registry is None:
            self._registry = self._load_registry()
        models = ScreenModels.from_registry(
            self._registry, list(job.models), self.max_formula_length, self.stability
        )
        if models.stability is not None:
            expected_reference = job.models[E_ABOVE_HULL]["reference"]
            if models.stability.reference.describe() != expected_reference:
                raise DomainError(
                    "reference_changed",
                    f"the hull reference changed from {expected_reference} while the job was queued "
                    "or running; submit the screen again",
                )
            # Jobs recorded before p_stable had a curve carry no "p_stable": nothing to compare.
            expected_p_stable = job.models[E_ABOVE_HULL].get("p_stable")
            if expected_p_stable not in (None, models.stability.describe_p_stable()):
                raise DomainError(
                    "model_changed",
                    f"p_stable's calibration changed from {expected_p_stable} to "
                    f"{models.stability.describe_p_stable()} while the job was queued or running; "
                    "submit the screen again",
                )
        for model in models.models:
            described = job.models[model.property]
            expected = described["version"]
            # cache_version is recorded by jobs created since elements_are_zero
            if (
                model.version != expected
                or described.get("cache_version", model.cache_version) != model.cache_version
            ):
                # Rows from two model versions in one ranking would be meaningless.
                raise DomainError(
                    "model_changed",
                    f"the {model.property} model changed from version "
                    f"{described.get('cache_version', expected)} to {model.cache_version} while the job "
                    "was queued or running; submit the screen again",
                )
        return models

    def _turn_over(self, job: Job, turn_started: float, done: int) -> bool:
        """After ``slice_s`` on one job, give the turn to a waiting job (it resumes from ``done``)."""
        if self.slice_s <= 0 or done >= job.total or time.monotonic() - turn_started < self.slice_s:
            return False
        if not self._with_store(lambda: self.jobs.others_waiting(job.id)):
            return False
        if self._with_store(lambda: self.jobs.give_turn(job.id, self.owner)):
            logger.info("screening job %s: gave its turn at row %d", job.id, done)
            self._turn_given = True
        return True  # given, or no longer ours (cancelled): either way this runner stops here

    def _sweep(self) -> None:
        """Delete jobs stopped longer ago than the retention period (at most every SWEEP_S)."""
        now = time.time()
        if self.retention_s <= 0 or now < self._next_sweep:
            return
        self._next_sweep = now + min(SWEEP_S, self.retention_s)
        expired = self.jobs.expire(now - self.retention_s)
        if expired:
            logger.info("screening: deleted %d job(s) past the retention period", len(expired))

    def _out_of_space(self, job: Job, done: int, error: StoreFull) -> None:
        """A full database fails the job that was writing (retrying would never end: the job stayed
        "running" for ever) and deletes its rows, which gives their room back to the others; both in
        one transaction, so a job is never left running without its rows."""
        logger.error(
            "screening job %s: the database is full at row %d; the job fails: %s", job.id, done, error
        )
        message = (
            f"storage_full: the database ran out of space at row {done:,} of {job.total:,} ({error}); "
            "the job's partial results were deleted. Free space or delete finished jobs, then submit "
            "it again"
        )
        try:
            self.jobs.fail_for_space(job.id, self.owner, message)
        except StoreUnavailable:  # not even that fits: the job keeps its rows, its lease brings it back
            logger.exception("screening job %s: cannot record that it failed", job.id)

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        try:
            self._with_store(lambda: self.jobs.finish(job.id, self.owner, status, error))
        except Exception:
            logger.exception("cannot record the end of screening job %s", job.id)

    def _with_store(self, operation: Callable[[], Any]) -> Any:
        """Run a database operation, waiting out outages (the job keeps its place meanwhile)."""
        failures = 0
        while True:
            try:
                return operation()
            except StoreFull:
                raise  # no wait makes room: the job fails (_out_of_space)
            except StoreUnavailable as error:
                self.last_error = str(error)
                if self._stopping.is_set():
                    raise
                logger.warning("screening runner: database unavailable, retrying: %s", error)
                self._stopping.wait(STORE_RETRY_S[min(failures, len(STORE_RETRY_S) - 1)])
                failures += 1


def next_chunk_size(size: int, elapsed_s: float, target_s: float, largest: int) -> int:
    """The next chunk's rows: twice as many after a fast chunk (under half the target), fewer in
    proportion after a slow one (over the target), else the same."""
    if elapsed_s < target_s / 2:
        size *= 2
    elif elapsed_s > target_s:
        size = int(size * target_s / elapsed_s)
    return min(largest, max(MIN_CHUNK_ROWS, size))


def _lower_priority(nice: int) -> None:
    """Run this thread at a higher nice value (Linux: per thread). Under CPU contention the kernel
    then favours the request threads (about 9:1 at nice 10), so a big job takes the CPU that
    /predict leaves idle. ORT's pool threads are created from this thread (the runner opens its
    own sessions here) and inherit it."""
    try:
        thread = threading.get_native_id()
        # Never raise the priority of a process already started nicer than this.
        os.setpriority(os.PRIO_PROCESS, thread, max(nice, os.getpriority(os.PRIO_PROCESS, thread)))
    except (AttributeError, OSError):  # not Linux, or not allowed: fairness then rests on threads
        logger.info("screening runner: cannot lower its thread priority")


def _store_rows(result: ChunkResult, sort_by: str | None) -> list[dict[str, Any]]:
    """Columnar chunk -> rows for JobStore.commit_chunk (compact payload, NaN as null)."""
    values = {name: column.tolist() for name, column in result.values.items()}
    uncertainties = {name: column.tolist() for name, column in result.uncertainties.items()}
    sort_values = values[sort_by] if sort_by is not None else None
    domains = {name: flags.tolist() for name, flags in result.domains.items()}
    rows = []
    for i, (index, formula, composition, error) in enumerate(
        zip(result.row_index.tolist(), result.formulas, result.compositions, result.errors, strict=True)
    ):
        if error is not None:
            payload: dict[str, Any] = {"error": error}
        else:
            payload = {
                "p": {name: [_finite(values[name][i]), _finite(uncertainties[name][i])] for name in values}
            }
            outside = [name for name, flags in domains.items() if flags[i] == 0.0]
            if outside:  # which models' training domains it is outside of (the job knows which record one)
                payload[OUTSIDE] = outside
            if result.hull_errors and result.hull_errors[i] is not None:  # why it has no e_above_hull
                payload[HULL_ERROR] = result.hull_errors[i]
        rows.append(
            {
                "row_index": index,
                "formula": formula,
                "composition": composition,
                "sort_value": _finite(sort_values[i]) if sort_values is not None else None,
                "payload": payload,
            }
        )
    return rows


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None
