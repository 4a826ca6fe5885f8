"""Screening jobs: POST /screen, GET /screen[/{id}[/results]], DELETE /screen/{id}.

A screen is submitted as JSON (an enumeration or a formula list) or as a multipart upload of a
CSV/Parquet file, checked in full before it is queued (unknown element, property, too large:
4xx at once), and run by the in-service runner (app.screening.runner). Results are pages of
rows shaped like /predict answers, or the whole table as CSV or Parquet.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import pyarrow.csv as pa_csv
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from app.api.access import client_of, queue_identity
from app.api.blocking import off_the_loop_if_large
from app.api.formats import dumps, json_response, preferred
from app.api.hull_answers import HullAnswers
from app.api.spreadsheet import defused_table
from app.api.unique_keys import loads_unique
from app.errors import DomainError, NotFoundError, PayloadTooLargeError
from app.schemas import ERROR_RESPONSES, ErrorResponse, inline_schema
from app.screening.compute import HULL_ERROR, IN_DOMAIN, OUTSIDE
from app.screening.enumerate import parse_chemsys
from app.screening.io import MEDIA_TYPES, DrainedSink, ResultWriter, format_of, read_formulas, rows_table
from app.screening.runner import ScreeningRunner
from app.screening.spec import ScreenRequest
from app.screening.submit import prepare_screen
from app.settings import Settings
from app.stability.assess import DERIVED_COLUMNS, E_ABOVE_HULL, SOURCE_PROPERTY
from app.stability.predicted_hull import Candidate, predicted_hull
from app.store.database import StoreFull, StoreUnavailable
from app.store.jobs import FINISHED, Job, JobStore, ResultRow

router = APIRouter(tags=["screening"])

MAX_PAGE = 10_000
# The largest OFFSET a database takes (a signed 64-bit integer in SQLite and PostgreSQL); a larger
# one would fail inside the driver instead of being refused as input.
MAX_OFFSET = 2**63 - 1
_T = TypeVar("_T")
ResultFormat = Literal["json", "csv", "parquet"]
_ACCEPTED: dict[str, ResultFormat] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
_SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_schema(ScreenRequest)},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "CSV or Parquet"},
                    "formula_column": {"type": "string", "default": "formula"},
                    "options": {
                        "type": "string",
                        "description": 'JSON object: the other request fields, e.g. {"sort_by": "band_gap"}',
                    },
                },
            }
        },
    },
}


_NO_JOB = {404: {"model": ErrorResponse, "description": "No such job (job_not_found)"}}
_FINISHED = {409: {"model": ErrorResponse, "description": "The job already ended (job_finished)"}}


class JobsUnavailable(DomainError):
    status_code = 503


class StorageFull(DomainError):
    """The database is out of space: 507 Insufficient Storage until the operator makes room."""

    status_code = 507


class JobFinished(DomainError):
    status_code = 409


class QuotaExceeded(DomainError):
    status_code = 429


# What a key over its screening quota is told to wait before trying again.
QUOTA_RETRY_S = 30


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Called by app.main's lifespan: the job runner lives as long as the service."""
    settings: Settings = app.state.settings
    runner = ScreeningRunner.from_settings(
        settings, JobStore(app.state.store.engine), stability=app.state.predictor.stability
    )
    runner.start()
    app.state.screening = runner
    app.state.submit_lock = asyncio.Lock()
    app.state.hull_answers = HullAnswers()
    try:
        yield
    finally:
        await asyncio.to_thread(runner.stop)


@router.post(
    "/screen",
    status_code=202,
    responses={202: {"description": "queued"}, **ERROR_RESPONSES},
    openapi_extra={"requestBody": _SUBMIT_BODY},
)
async def submit(request: Request) -> Response:
    """Queue a screen: `{"chemsys": "Li-Fe-O", "max_atoms": 6, ...}`, `{"formulas": [...]}`, or a
    multipart upload (`file` = CSV/Parquet, `formula_column`, `options` = JSON of the other fields)."""
    settings: Settings = request.app.state.settings
    runner: ScreeningRunner = request.app.state.screening
    client = client_of(request.scope)
    row_limit = settings.screen_max_compositions
    if client is not None:  # a key already at its job limit is refused before its upload is read
        rows_left = await _within_quota(runner.jobs, client, 0, settings)
        row_limit = min(row_limit, rows_left)
    try:
        screen, formulas = await _read_submission(request, row_limit)
    except PayloadTooLargeError as error:
        # An upload is read only as far as the key's share allows (a 32 KB Parquet file can hold
        # 10M rows): past it, the answer is the key's quota, not the service's limit.
        # (a file past the service's own limit stays a 413: no wait would let it in)
        count = error.details.get("count", 0)
        over_share = (
            error.code == "too_many_compositions" and row_limit < count <= settings.screen_max_compositions
        )
        if client is not None and over_share:
            await _within_quota(runner.jobs, client, count, settings)
        raise
    prepared = await asyncio.to_thread(
        prepare_screen,
        screen,
        request.app.state.registry,
        max_compositions=settings.screen_max_compositions,
        max_formula_length=settings.max_formula_length,
        formulas=formulas,
        stability=request.app.state.predictor.stability,
    )
    # Check and create under one lock: concurrent submissions of one key cannot all pass the
    # quota (per process; with several workers each counts the same database, so a key may
    # briefly hold up to one extra job per worker).
    async with request.app.state.submit_lock:
        if client is not None:
            await _within_quota(runner.jobs, client, prepared.total, settings)
        job = await _store(
            runner.jobs.create,
            uuid.uuid4().hex,
            prepared.stored_request(),
            prepared.models.describe(),
            prepared.total,
            prepared.formulas,
            queue_identity(request.scope),
        )
    runner.wake()
    response = json_response(job_view(job), status_code=202)
    response.headers["Location"] = f"/screen/{job.id}"
    return response


@router.get("/screen", responses=ERROR_RESPONSES)
async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
    """The most recent jobs, newest first."""
    jobs = await _store(_jobs(request).recent, limit, client_of(request.scope))
    return json_response({"jobs": [job_view(job) for job in jobs]})


@router.get("/screen/{job_id}", responses={**_NO_JOB, **ERROR_RESPONSES})
async def status(job_id: str, request: Request) -> Response:
    """Status (queued, running, succeeded, failed, cancelled) and progress {done, total}."""
    job = await _job(request, job_id)
    view = job_view(job)
    view["result_count"] = await _store(_jobs(request).count_results, job.id)
    return json_response(view)


@router.delete("/screen/{job_id}", responses={**_NO_JOB, **_FINISHED})
async def cancel(
    job_id: str,
    request: Request,
    purge: Annotated[bool, Query(description="delete a stopped job and its rows")] = False,
) -> Response:
    """Cancel a queued or running job; the runner stops at its next chunk (rows so far are kept).

    With `?purge=true`, delete a stopped job (succeeded, failed or cancelled) and its rows.
    Stopped jobs are also deleted IBRNET_SCREEN_RETENTION_HOURS after they stop."""
    job = await _job(request, job_id)
    if purge:
        if job.status not in FINISHED:
            raise JobFinished(
                "job_running", f"job {job_id} is {job.status}: cancel it first, then purge it", id=job_id
            )
        if not await _store(_jobs(request).delete, job_id):
            raise NotFoundError("job_not_found", f"no screening job {job_id!r}", id=job_id)
        return json_response({"id": job_id, "status": "deleted"})
    if job.status in FINISHED - {"cancelled"}:
        raise JobFinished("job_finished", f"job {job_id} already {job.status}", id=job_id, status=job.status)
    cancelled = await _store(_jobs(request).cancel, job_id)
    assert cancelled is not None
    return json_response(job_view(cancelled))


@router.get(
    "/screen/{job_id}/results",
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        **_NO_JOB,
        **ERROR_RESPONSES,
    },
)
async def results(
    job_id: str,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
    after: Annotated[
        str | None,
        Query(max_length=64, description="the previous page's next_after: the next page without OFFSET"),
    ] = None,
    format: Annotated[
        ResultFormat | None, Query(description="overrides Accept: json, csv or parquet")
    ] = None,
) -> Response:
    """Rows in ranking order (sort_by) or input order. JSON: one page (`offset`, `limit`);
    CSV and Parquet (`Accept` or `?format=`): every row, once the job has stopped (409 job_running
    before). A running job's JSON pages show its rows so far (ranked so far: pages may shift)."""
    job = await _job(request, job_id)
    jobs = _jobs(request)
    chosen = format or preferred(request.headers.get("accept"), _ACCEPTED, "json")
    if chosen == "json":
        rows = await _store(jobs.results, job, offset, limit, _cursor_row(after))
        count = await _store(jobs.count_results, job.id)
        next_offset = offset + len(rows) if after is None and offset + len(rows) < count else None
        page = {
            "id": job.id,
            "status": job.status,
            "progress": {"done": job.done, "total": job.total},
            "count": count,
            "offset": offset,
            "limit": limit,
            "next_offset": next_offset,
            # Deep pages of a big job: follow next_after (no rows to skip), not next_offset (a count).
            "next_after": _cursor(rows[-1]) if len(rows) == limit else None,
            "results": [api_row(row, job.models) for row in rows],
        }
        return json_response(page)
    if job.status not in FINISHED:
        # A file is read in many queries while the runner commits and re-ranks: rows would be
        # duplicated and lost. JSON pages show progress; files wait for a consistent table.
        raise JobFinished(
            "job_running",
            f"job {job_id} is {job.status}: CSV and Parquet files are served once it has stopped; "
            "JSON pages show its rows so far",
            id=job_id,
            status=job.status,
        )
    headers = {"Content-Disposition": f'attachment; filename="screen-{job.id}.{chosen}"'}
    return StreamingResponse(_file_stream(jobs, job, chosen), media_type=MEDIA_TYPES[chosen], headers=headers)


@router.get(
    "/screen/{job_id}/hull",
    responses={**_NO_JOB, 409: {"model": ErrorResponse, "description": "The job has not succeeded"}},
)
async def hull(job_id: str, request: Request) -> Response:
    """The predicted hull of a finished chemical-system screen with `e_above_hull`: the reference's
    known compounds plus every screened composition predicted below the known hull."""
    job = await _job(request, job_id)
    stability = request.app.state.predictor.stability
    if job.request.get("chemsys") is None:
        raise DomainError(
            "not_a_chemsys_screen", f"job {job_id} screened a formula list, not a chemical system"
        )
    if E_ABOVE_HULL not in job.models or stability is None:
        raise DomainError("no_stability", f"job {job_id} has no e_above_hull to build a hull from")
    if stability.reference.describe() != job.models[E_ABOVE_HULL]["reference"]:
        raise JobFinished("reference_changed", "the hull reference changed since the job ran; screen again")
    if job.status != "succeeded":
        raise JobFinished("job_not_succeeded", f"job {job_id} is {job.status}", id=job_id, status=job.status)
    jobs = _jobs(request)

    def build() -> bytes:
        candidates = [
            Candidate(
                row.composition,
                row.payload["p"][SOURCE_PROPERTY][0],
                row.payload["p"][E_ABOVE_HULL][0],
                row.payload["p"]["p_stable"][0],
            )
            for batch in jobs.iter_results(job)
            for row in batch
            if "p" in row.payload and (row.payload["p"][E_ABOVE_HULL][0] or 0.0) < 0
        ]
        elements = parse_chemsys(job.request["chemsys"])
        return dumps({"id": job.id, **predicted_hull(stability.reference, elements, candidates)})

    # The job is checked above on every call (a purged one is 404), the answer built once.
    answers: HullAnswers = request.app.state.hull_answers
    body = await answers.get(job.id, lambda: _store(build))  # a changed reference is refused above
    return Response(body, media_type="application/json")


# -- views ----------------------------------------------------------------------------------------


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "progress": {"done": job.done, "total": job.total},
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,  # > 1: resumed after a restart
        "request": job.request,
        "models": job.models,
        "results": f"/screen/{job.id}/results",
    }


def api_row(row: ResultRow, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A stored row shaped like a /predict answer, plus ``index`` (the row's input position) and
    ``in_domain`` (the row's, over every screened model). A screen stores value, uncertainty and
    which models' domains a row is outside of (the job records which models have one): its answers
    have ``in_domain`` (for those models), no interval and no domain_warning."""
    if "error" in row.payload:
        return {"index": row.row_index, "formula": row.formula, "error": row.payload["error"]}
    stored = row.payload["p"]
    predictions = {
        name: {
            "value": value,
            "unit": models[name]["unit"],
            "model": models[name]["model"],
            "version": models[name]["version"],
            "uncertainty": uncertainty,
            "cached": False,  # screening computes every row; it does not read the cache
        }
        for name, (value, uncertainty) in stored.items()
        if name not in DERIVED_COLUMNS
    }
    outside = row.payload.get(OUTSIDE, ())
    recorded = [name for name in predictions if models[name].get("training_domain")]
    for name in recorded:  # as /predict says it, for the models that record a training domain
        predictions[name][IN_DOMAIN] = name not in outside
    if E_ABOVE_HULL in predictions:  # its companion columns are fields of its answer, as in /predict
        known = stored["known"][0]
        predictions[E_ABOVE_HULL].update(
            p_stable=stored["p_stable"][0],
            known=None if known is None else known == 1.0,
            reference=models[E_ABOVE_HULL]["reference"],
        )
        if HULL_ERROR in row.payload:
            predictions[E_ABOVE_HULL]["error"] = row.payload[HULL_ERROR]
    return {
        "index": row.row_index,
        "formula": row.formula,
        "composition": row.composition,
        "predictions": predictions,
        # inside every model's training domain (null: no model records its domain)
        IN_DOMAIN: not outside if recorded else None,
    }


# -- helpers --------------------------------------------------------------------------------------


async def _read_submission(request: Request, max_rows: int) -> tuple[ScreenRequest, list[str] | None]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _read_upload(request, max_rows)
    raw = await request.body()
    return await off_the_loop_if_large(len(raw), _validated_json, raw), None


def _validated_json(raw: bytes) -> ScreenRequest:
    try:
        body = loads_unique(raw)
    except ValueError as error:
        # The same 400 invalid_json answer as /predict (app/api/errors.py).
        problem = {"type": "json_invalid", "loc": ("body",), "ctx": {"error": str(error)}}
        raise RequestValidationError([{**problem, "msg": "JSON decode error"}]) from None
    return _validated(body)


async def _read_upload(request: Request, max_rows: int) -> tuple[ScreenRequest, list[str]]:
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise DomainError(
            "missing_file", "a multipart screen needs a 'file' field with a CSV or Parquet file"
        )
    try:
        options = loads_unique(str(form.get("options") or "{}"))
    except ValueError as error:
        raise DomainError("invalid_options", f"'options' is not a JSON object: {error}") from None
    if not isinstance(options, dict) or "formulas" in options or "chemsys" in options:
        raise DomainError(
            "invalid_options", "'options' must be a JSON object without 'formulas' or 'chemsys'"
        )
    screen = _validated({**options, "formulas": []})
    file_format = format_of(upload.filename or "upload")
    column = str(form.get("formula_column") or "formula")
    max_length = request.app.state.settings.max_formula_length
    formulas = await asyncio.to_thread(read_formulas, upload.file, column, file_format, max_rows, max_length)
    return screen, formulas


def _validated(body: Any) -> ScreenRequest:
    try:
        return ScreenRequest.model_validate(body)
    except ValidationError as error:
        # The service's one validation-error format (app/api/errors.py).
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem.get("loc", ()))} for problem in error.errors()]
        ) from None


async def _gone(jobs: JobStore, job_id: str) -> bool:
    """Whether the job was deleted; a database blip at the last step does not fail a whole file."""
    try:
        return await _store(jobs.get, job_id) is None
    except JobsUnavailable:
        return False


class JobGoneDuringDownload(RuntimeError):
    """A job deleted while its file was being sent: the file must not end as if complete."""


async def _file_stream(jobs: JobStore, job: Job, file_format: ResultFormat) -> AsyncIterator[bytes]:
    """The job's rows as a CSV or Parquet file, sent a batch (a Parquet row group) at a time.

    Each step is a short thread task, so a download never holds a thread for its whole length;
    and when the client leaves, the response stops iterating here: the work stops with it.
    """
    properties = list(job.models)
    batches = jobs.iter_results(job)
    sink = DrainedSink()
    writer = ResultWriter(sink, properties, "parquet") if file_format == "parquet" else None
    header = True
    try:
        while True:
            # One short thread task per batch (the query, shaping the rows, writing them): the event
            # loop only hands the bytes on.
            chunk = await _store(_next_piece, batches, job, properties, writer, sink, header)
            if chunk is None:
                break
            yield chunk
            header = False
        if writer is None and header:  # no rows at all: still a header
            yield _csv_bytes(rows_table([], properties), header=True)
        if await _gone(jobs, job.id):
            # Deleted while it was sent (a purge, the retention sweep): the rows stopped early.
            # Ending normally would hand the client a well-formed but truncated file; failing the
            # stream drops the connection without the last chunk, so the client sees an error.
            raise JobGoneDuringDownload(job.id)
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        yield sink.drain()  # the footer


def _next_piece(
    batches: Iterator[list[ResultRow]],
    job: Job,
    properties: list[str],
    writer: ResultWriter | None,
    sink: DrainedSink,
    header: bool,
) -> bytes | None:
    """The next batch of a download as file bytes (CSV text, or a Parquet row group); None at the end."""
    batch = next(batches, None)
    if batch is None:
        return None
    table = rows_table([api_row(row, job.models) for row in batch], properties)
    if writer is None:
        return _csv_bytes(table, header=header)
    writer.write(table)
    return sink.drain()


def _cursor(row: ResultRow) -> str:
    """Where a page ended: the last row's index and rank value (``_cursor_row`` reads it back)."""
    return f"{row.row_index}:{'null' if row.sort_value is None else repr(row.sort_value)}"


def _cursor_row(cursor: str | None) -> ResultRow | None:
    if cursor is None:
        return None
    index, _, value = cursor.partition(":")
    try:
        sort_value = None if value == "null" else float(value)
        row_index = int(index)
    except ValueError:
        raise DomainError("invalid_cursor", f"'after' {cursor!r} is not a next_after of this API") from None
    if (sort_value is not None and not math.isfinite(sort_value)) or not 0 <= row_index <= MAX_OFFSET:
        raise DomainError("invalid_cursor", f"'after' {cursor!r} is not a next_after of this API")
    return ResultRow(row_index, "", None, sort_value, {})


def _csv_bytes(table: Any, header: bool) -> bytes:
    buffer = io.BytesIO()
    pa_csv.write_csv(defused_table(table), buffer, pa_csv.WriteOptions(include_header=header))
    return buffer.getvalue()


def _jobs(request: Request) -> JobStore:
    return request.app.state.screening.jobs


async def _within_quota(jobs: JobStore, client: str, rows: int, settings: Settings) -> int:
    """429 when this key already has its share of the queue (jobs at once, rows still to compute);
    else the rows it may still add."""
    active, pending = await _store(jobs.active_load, client)
    if active >= settings.screen_max_jobs_per_key:
        limit = settings.screen_max_jobs_per_key
        message = f"this key has {active} screens queued or running, the limit is {limit}"
    elif pending + rows > settings.screen_max_rows_per_key:
        message = (
            f"this screen's {rows:,} rows and the {pending:,} this key has queued exceed its "
            f"{settings.screen_max_rows_per_key:,} (IBRNET_SCREEN_MAX_ROWS_PER_KEY)"
        )
    else:
        return settings.screen_max_rows_per_key - pending - rows
    raise QuotaExceeded("quota_exceeded", f"{message}; retry when one finishes", retry_after_s=QUOTA_RETRY_S)


async def _job(request: Request, job_id: str) -> Job:
    # Ids are 32 hex digits: a longer one is no job, and is not looked up or echoed whole (a 50 KB
    # id came back as a 100 KB 404).
    job = await _store(_jobs(request).get, job_id) if len(job_id) <= MAX_JOB_ID_LENGTH else None
    client = client_of(request.scope)
    if job is not None and client is not None and job.client != client:
        job = None  # another key's job: as if it did not exist
    if job is None:
        shown = job_id if len(job_id) <= MAX_JOB_ID_LENGTH else job_id[:MAX_JOB_ID_LENGTH] + "…"
        raise NotFoundError("job_not_found", f"no screening job {shown!r}", id=shown)
    return job


MAX_JOB_ID_LENGTH = 64


async def _store(operation: Callable[..., _T], *args: Any) -> _T:
    """A job-store call off the event loop; an unreachable database becomes a 503."""
    try:
        return await asyncio.to_thread(operation, *args)
    except StoreFull as error:
        raise StorageFull("storage_full", f"the database has no room for this: {error}") from None
    except StoreUnavailable as error:
        raise JobsUnavailable("database_unavailable", f"screening jobs need the database: {error}") from None


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
