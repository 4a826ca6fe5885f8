"""Screening jobs and their results: durable state, progress and rows in the service's database.

Durability rests on one rule: a chunk's result rows and the job's progress are written in ONE
transaction, guarded by the progress the runner started from (``done = :expected``). A process
killed at any instant leaves either both or neither, so a restarted runner resumes at ``done``
and the primary key (job_id, row_index) makes a duplicate row impossible even if two runners
ever raced.

Runners hold a job through a lease (owner + heartbeat, renewed by every commit and every third of
the lease by the runner's heartbeat thread). A job whose runner died (kill -9) is taken over once
its heartbeat is older than the lease.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from app.chemistry.formula import LongFormula, NotAString
from app.store.database import Base, SchemaGuard

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


class ScreeningJobRecord(Base):
    __tablename__ = "screening_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    request: Mapped[str] = mapped_column(Text)  # the validated request as JSON
    # Formula jobs: the input formulas (zlib-compressed JSON list), so a resume reads the same rows.
    inputs: Mapped[bytes | None] = mapped_column(LargeBinary)
    models: Mapped[str] = mapped_column(Text)  # JSON: property -> {name, version, unit}
    total: Mapped[int] = mapped_column(BigInteger)
    done: Mapped[int] = mapped_column(BigInteger, default=0)  # input rows whose results are committed
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(64))
    # When it last gave its turn to a waiting job (fair scheduling): it queues again from there.
    turn_at: Mapped[float | None] = mapped_column(Float(precision=53))
    # Who submitted it (a hash of the API key: only they see and stop it; with keys off, of the
    # peer address, for fair turns only: app/api/access.py queue_identity).
    client: Mapped[str | None] = mapped_column(String(64), index=True)
    # Times are epoch seconds: identical on SQLite and PostgreSQL, and compared as numbers.
    heartbeat: Mapped[float | None] = mapped_column(Float(precision=53))
    created_at: Mapped[float] = mapped_column(Float(precision=53), index=True)
    started_at: Mapped[float | None] = mapped_column(Float(precision=53))
    finished_at: Mapped[float | None] = mapped_column(Float(precision=53))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims: > 1 means it was resumed


class ScreeningResultRecord(Base):
    __tablename__ = "screening_results"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("screening_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    row_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # position in the input
    formula: Mapped[str] = mapped_column(Text)
    composition: Mapped[str | None] = mapped_column(Text)  # canonical key; NULL for a refused formula
    sort_value: Mapped[float | None] = mapped_column(Float(precision=53))
    # {"p": {property: [value, uncertainty]}} or {"error": {...}}: properties vary per job.
    payload: Mapped[str] = mapped_column(Text)

    # A sorted job's pages walk one of these in order (ascending or descending value, ties in input
    # order), so no page sorts the job's rows (jobs.results).
    __table_args__ = (
        Index("ix_screening_results_rank", "job_id", "sort_value", "row_index"),
        Index("ix_screening_results_rank_desc", "job_id", text("sort_value DESC"), "row_index"),
    )


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's row."""

    id: str
    status: str
    request: dict[str, Any]
    models: dict[str, dict[str, Any]]
    total: int
    done: int
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    client: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class ResultRow:
    row_index: int
    formula: str
    composition: str | None
    sort_value: float | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class Ranking:
    """How a job's results are ordered and cut: by one property's value, keeping the best top_k."""

    ascending: bool = True
    top_k: int | None = None


def encode_inputs(formulas: Sequence[str]) -> bytes:
    # A non-string item keeps its kind and a clipped formula its length (an object in the list),
    # so after a restart each is refused with the same message as before it.
    items = [_stored(text) if isinstance(text, NotAString | LongFormula) else text for text in formulas]
    # One JSON array per line of INPUT_LINE_ITEMS: json.dumps and json.loads hold the GIL for their
    # whole call (10M formulas: about a second each, a stall for every request), a line at a time
    # they let other threads in. A blob of one array (written before) reads the same way.
    lines = (
        json.dumps(items[start : start + INPUT_LINE_ITEMS], separators=(",", ":"))
        for start in range(0, max(len(items), 1), INPUT_LINE_ITEMS)
    )
    return zlib.compress("\n".join(lines).encode(), 6)


def decode_inputs(blob: bytes) -> list[str]:
    items: list[str] = []
    for line in zlib.decompress(blob).decode().split("\n"):
        items.extend(_restored(item) if isinstance(item, dict) else item for item in json.loads(line))
    return items


INPUT_LINE_ITEMS = 65_536


def _stored(text: NotAString | LongFormula) -> dict[str, Any]:
    if isinstance(text, NotAString):
        return {"kind": text.kind, "text": str(text)}
    return {"length": text.length, "text": str(text)}


def _restored(item: dict[str, Any]) -> str:
    if "kind" in item:
        return NotAString.of_kind(item["text"], item["kind"])
    return LongFormula.of_length(item["text"], item["length"])


class JobStore:
    """Every read and write of screening jobs; database failures surface as StoreUnavailable."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # An IntegrityError (e.g. a duplicate row) is a bug, not an outage: retrying would repeat it forever.
        self._guard = SchemaGuard(engine, "screening jobs", passthrough=(IntegrityError,))

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- submission and status -------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        request: dict[str, Any],
        models: dict[str, dict[str, Any]],
        total: int,
        inputs: Sequence[str] | None = None,
        client: str | None = None,
    ) -> Job:
        now = time.time()
        values = {
            "id": job_id,
            "client": client,
            "status": QUEUED,
            "request": json.dumps(request),
            "inputs": encode_inputs(inputs) if inputs is not None else None,
            "models": json.dumps(models),
            "total": total,
            "done": 0,
            "created_at": now,
            "attempts": 0,
        }
        with self._guard("create"), self._engine.begin() as connection:
            connection.execute(insert(ScreeningJobRecord), values)
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> Job | None:
        with self._guard("get"), self._engine.connect() as connection:
            row = connection.execute(select(*_JOB_COLUMNS).where(_JOBS.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def recent(self, limit: int = 100, client: str | None = None) -> list[Job]:
        """The newest jobs; with ``client``, that client's only."""
        statement = select(*_JOB_COLUMNS).order_by(_JOBS.c.created_at.desc()).limit(limit)
        if client is not None:
            statement = statement.where(_JOBS.c.client == client)
        with self._guard("list"), self._engine.connect() as connection:
            return [_job(row) for row in connection.execute(statement)]

    def inputs(self, job_id: str) -> list[str]:
        with self._guard("inputs"), self._engine.connect() as connection:
            blob = connection.execute(select(_JOBS.c.inputs).where(_JOBS.c.id == job_id)).scalar_one()
        return decode_inputs(blob) if blob is not None else []

    def cancel(self, job_id: str) -> Job | None:
        """Queued or running -> cancelled at once; the runner sees it at its next commit and stops."""
        statement = (
            update(ScreeningJobRecord)
            .where(_JOBS.c.id == job_id, _JOBS.c.status.in_((QUEUED, RUNNING)))
            .values(status=CANCELLED, finished_at=time.time())
        )
        with self._guard("cancel"), self._engine.begin() as connection:
            connection.execute(statement)
        return self.get(job_id)

    def active_load(self, client: str | None) -> tuple[int, int]:
        """(queued and running jobs, their rows still to compute) of one client (quotas)."""
        statement = select(func.count(), func.coalesce(func.sum(_JOBS.c.total - _JOBS.c.done), 0)).where(
            _JOBS.c.status.in_((QUEUED, RUNNING)), _JOBS.c.client == client
        )
        with self._guard("load"), self._engine.connect() as connection:
            jobs, rows = connection.execute(statement).one()
        return int(jobs), int(rows)

    def delete(self, job_id: str) -> bool:
        """Remove a stopped job (succeeded, failed or cancelled) and its rows; False if none such."""
        with self._guard("delete"), self._engine.begin() as connection:
            stopped = connection.execute(
                select(_JOBS.c.id).where(_JOBS.c.id == job_id, _JOBS.c.status.in_(FINISHED))
            ).first()
            if stopped is None:
                return False
            connection.execute(delete(ScreeningResultRecord).where(_RESULTS.c.job_id == job_id))
            connection.execute(delete(ScreeningJobRecord).where(_JOBS.c.id == job_id))
        return True

    def fail_for_space(self, job_id: str, owner: str, error: str) -> bool:
        """Fail a job this runner holds and delete its rows, in one transaction: either both happen
        (the deleted rows make room for the update) or neither (the job keeps its rows and its lease
        brings it back later). False if the job is no longer ours."""
        now = time.time()
        ours = and_(_JOBS.c.id == job_id, _JOBS.c.owner == owner, _JOBS.c.status == RUNNING)
        mark = (
            update(ScreeningJobRecord)
            .where(ours)
            .values(status=FAILED, error=error, finished_at=now, heartbeat=now)
        )
        with self._guard("fail_for_space"), self._engine.begin() as connection:
            if connection.execute(select(_JOBS.c.id).where(ours)).first() is None:
                return False
            connection.execute(delete(ScreeningResultRecord).where(_RESULTS.c.job_id == job_id))
            return connection.execute(mark).rowcount == 1

    def expire(self, finished_before: float) -> list[str]:
        """Delete every job that stopped before this time (retention); the ids deleted."""
        statement = select(_JOBS.c.id).where(
            _JOBS.c.status.in_(FINISHED), _JOBS.c.finished_at < finished_before
        )
        with self._guard("expire"), self._engine.connect() as connection:
            expired = [row.id for row in connection.execute(statement)]
        return [job_id for job_id in expired if self.delete(job_id)]

    # -- the runner's side -----------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float) -> Job | None:
        """Take a queued job, or a running one whose runner stopped renewing its lease: the oldest of
        the client served longest ago, so turns go round the clients, not only the jobs (six big
        screens of one client kept another's three formulas waiting 62 s behind all six)."""
        now = time.time()
        claimable = or_(
            _JOBS.c.status == QUEUED, and_(_JOBS.c.status == RUNNING, _JOBS.c.heartbeat < now - lease_s)
        )
        # A job that gave its turn queues again from that moment, behind the jobs already waiting.
        queued_since = func.coalesce(_JOBS.c.turn_at, _JOBS.c.created_at)
        waiting = select(_JOBS.c.client).where(claimable).group_by(_JOBS.c.client)
        # A client is being served while one of its jobs runs (another runner's), else it was
        # last served when one of its jobs gave its turn; never: first.
        serving = and_(_JOBS.c.status == RUNNING, _JOBS.c.heartbeat >= now - lease_s)
        last_served = (
            select(_JOBS.c.client, func.max(case((serving, now), else_=_JOBS.c.turn_at)))
            .where(_JOBS.c.status.in_((QUEUED, RUNNING)))
            .group_by(_JOBS.c.client)
        )
        with self._guard("claim"), self._engine.connect() as connection:
            clients = list(connection.execute(waiting).scalars())
            served = {client: at for client, at in connection.execute(last_served).all()}
        for client in sorted(clients, key=lambda c: (served.get(c) is not None, served.get(c) or 0.0)):
            of_client = _JOBS.c.client.is_(None) if client is None else _JOBS.c.client == client
            candidates = select(_JOBS.c.id).where(claimable, of_client).order_by(queued_since).limit(8)
            with self._guard("claim"), self._engine.connect() as connection:
                job_ids = list(connection.execute(candidates).scalars())
            for job_id in job_ids:
                job = self._take(job_id, claimable, owner, now)
                if job is not None:
                    return job
        return None

    def _take(self, job_id: str, claimable: Any, owner: str, now: float) -> Job | None:
        statement = (
            update(ScreeningJobRecord)
            .where(_JOBS.c.id == job_id, claimable)
            .values(
                status=RUNNING,
                owner=owner,
                heartbeat=now,
                attempts=_JOBS.c.attempts + 1,
                started_at=func.coalesce(_JOBS.c.started_at, now),
            )
        )
        # The conditional UPDATE is the claim: of several runners, exactly one sees rowcount 1.
        with self._guard("claim"), self._engine.begin() as connection:
            claimed = connection.execute(statement).rowcount == 1
        return self.get(job_id) if claimed else None  # read after the commit: the snapshot shows it

    def commit_chunk(
        self,
        job_id: str,
        owner: str,
        expected_done: int,
        new_done: int,
        rows: Sequence[dict[str, Any]],
        ranking: Ranking | None = None,
    ) -> bool:
        """Store a chunk's rows and advance the progress atomically; False if the job is no longer ours.

        ``rows`` are dicts with row_index, formula, composition, sort_value and payload (a dict).
        With a top_k ranking, rows that fell out of the best top_k are deleted in the same
        transaction, so a big screen keeps only what it will return.
        """
        advance = (
            update(ScreeningJobRecord)
            .where(
                _JOBS.c.id == job_id,
                _JOBS.c.owner == owner,
                _JOBS.c.status == RUNNING,
                _JOBS.c.done == expected_done,
            )
            .values(done=new_done, heartbeat=time.time())
        )
        values = [{**row, "job_id": job_id, "payload": json.dumps(row["payload"])} for row in rows]
        with self._guard("commit"), self._engine.begin() as connection:
            # The UPDATE first: it takes the write lock, so a concurrent cancel is either before
            # it (rowcount 0, nothing written) or after the commit.
            if connection.execute(advance).rowcount != 1:
                connection.rollback()
                return False
            if values:
                connection.execute(insert(ScreeningResultRecord), values)
            if ranking is not None and ranking.top_k is not None:
                _keep_top_k(connection, job_id, ranking)
            # The lease counts from the end of a long write: a claim that waited for this
            # transaction judged the heartbeat by its own earlier clock, and took a live job over.
            connection.execute(
                update(ScreeningJobRecord).where(_JOBS.c.id == job_id).values(heartbeat=time.time())
            )
        return True

    def finish(self, job_id: str, owner: str, status: str, error: str | None = None) -> bool:
        now = time.time()
        values = {"status": status, "error": error, "finished_at": now, "heartbeat": now}
        return self._update_own("finish", job_id, owner, values)

    def release(self, job_id: str, owner: str) -> bool:
        """Back to the queue (graceful shutdown): the next runner resumes it without waiting for the lease."""
        values = {"status": QUEUED, "owner": None, "heartbeat": None}
        return self._update_own("release", job_id, owner, values)

    def give_turn(self, job_id: str, owner: str) -> bool:
        """Back to the queue behind the jobs waiting now (fair scheduling); not counted as a resume."""
        values = {
            "status": QUEUED,
            "owner": None,
            "heartbeat": None,
            "turn_at": time.time(),
            "attempts": _JOBS.c.attempts - 1,  # the next claim adds it back
        }
        return self._update_own("give_turn", job_id, owner, values)

    def others_waiting(self, job_id: str) -> bool:
        """Whether another job is queued (the running one should then give it a turn)."""
        statement = select(_JOBS.c.id).where(_JOBS.c.status == QUEUED, _JOBS.c.id != job_id).limit(1)
        with self._guard("waiting"), self._engine.connect() as connection:
            return connection.execute(statement).first() is not None

    def renew(self, job_id: str, owner: str) -> bool:
        # Never backwards: a renew that waited for a long commit would otherwise write its own
        # earlier clock over the commit's fresher one, and make a live job look abandoned.
        now = time.time()
        newer = case((_JOBS.c.heartbeat < now, now), else_=_JOBS.c.heartbeat)
        return self._update_own("renew", job_id, owner, {"heartbeat": newer})

    def _update_own(self, operation: str, job_id: str, owner: str, values: dict[str, Any]) -> bool:
        """Update a job this runner is running; False if it is no longer ours (cancelled, taken over)."""
        statement = (
            update(ScreeningJobRecord)
            .where(_JOBS.c.id == job_id, _JOBS.c.owner == owner, _JOBS.c.status == RUNNING)
            .values(values)
        )
        with self._guard(operation), self._engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    # -- results -------------------------------------------------------------------------------

    def count_results(self, job_id: str) -> int:
        statement = select(func.count()).select_from(_RESULTS).where(_RESULTS.c.job_id == job_id)
        with self._guard("count"), self._engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def results(
        self, job: Job, offset: int = 0, limit: int = 1000, after: ResultRow | None = None
    ) -> list[ResultRow]:
        """``limit`` rows in result order: those past ``after`` (a row of an earlier page: the index
        walks straight there), or past the first ``offset`` rows (the database counts them: slow
        for deep pages of a big job).

        A sorted job's order is its rankable rows by value (ties in input order), then the rows
        without a value (refused formulas) in input order. Each part is read in the order of an
        index (ix_screening_results_rank or _rank_desc), so a page costs its own rows, never a sort
        of the whole job."""
        if job.request.get("sort_by") is None:
            statement = self._columns(job).order_by(_RESULTS.c.row_index)
            if after is not None:
                statement = statement.where(_RESULTS.c.row_index > after.row_index)
            with self._guard("results"), self._engine.connect() as connection:
                return _fetch(connection, statement.offset(offset).limit(limit))
        value, index = _RESULTS.c.sort_value, _RESULTS.c.row_index
        ascending = job.request.get("ascending", True)
        rows: list[ResultRow] = []
        with self._guard("results"), self._engine.connect() as connection:  # one snapshot (SQLite)
            if after is None or after.sort_value is not None:
                ranked_rows = value.is_not(None)
                if after is not None:
                    beyond = value > after.sort_value if ascending else value < after.sort_value
                    ranked_rows = and_(
                        ranked_rows, or_(beyond, and_(value == after.sort_value, index > after.row_index))
                    )
                ranked = self._columns(job).where(ranked_rows)
                ranked = ranked.order_by(value.asc() if ascending else value.desc(), index)
                rows = _fetch(connection, ranked.offset(offset).limit(limit))
                if len(rows) == limit:
                    return rows
                if offset and not rows:  # the offset reaches past the ranked rows: into the tail
                    counted = select(func.count()).select_from(_RESULTS).where(_RESULTS.c.job_id == job.id)
                    offset -= int(connection.execute(counted.where(ranked_rows)).scalar_one())
                else:
                    offset = 0
            tail = self._columns(job).where(value.is_(None))
            if after is not None and after.sort_value is None:
                tail = tail.where(index > after.row_index)
            tail = tail.order_by(index).offset(max(offset, 0)).limit(limit - len(rows))
            return rows + _fetch(connection, tail)

    def iter_results(self, job: Job, batch_size: int = 5000) -> Iterator[list[ResultRow]]:
        """All of a job's rows in result order, a batch at a time (memory stays at one batch), each
        batch from where the last one ended: a million-row download costs no deeper OFFSETs."""
        last: ResultRow | None = None
        while True:
            batch = self.results(job, limit=batch_size, after=last)
            if not batch:
                return
            yield batch
            last = batch[-1]

    @staticmethod
    def _columns(job: Job) -> Any:
        return select(
            _RESULTS.c.row_index,
            _RESULTS.c.formula,
            _RESULTS.c.composition,
            _RESULTS.c.sort_value,
            _RESULTS.c.payload,
        ).where(_RESULTS.c.job_id == job.id)


_JOBS = ScreeningJobRecord.__table__
_RESULTS = ScreeningResultRecord.__table__
_JOB_COLUMNS = (
    _JOBS.c.id,
    _JOBS.c.status,
    _JOBS.c.request,
    _JOBS.c.models,
    _JOBS.c.total,
    _JOBS.c.done,
    _JOBS.c.error,
    _JOBS.c.created_at,
    _JOBS.c.started_at,
    _JOBS.c.finished_at,
    _JOBS.c.attempts,
    _JOBS.c.client,
)


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        status=row.status,
        request=json.loads(row.request),
        models=json.loads(row.models),
        total=int(row.total),
        done=int(row.done),
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=int(row.attempts),
        client=row.client,
    )


def _fetch(connection: Connection, statement: Any) -> list[ResultRow]:
    return [_result(row) for row in connection.execute(statement)]


def _result(row: Any) -> ResultRow:
    return ResultRow(row.row_index, row.formula, row.composition, row.sort_value, json.loads(row.payload))


def _keep_top_k(connection: Connection, job_id: str, ranking: Ranking) -> None:
    """Delete the job's rows ranked below the top_k-th (rows without a sort value never rank)."""
    assert ranking.top_k is not None
    value, index = _RESULTS.c.sort_value, _RESULTS.c.row_index
    connection.execute(delete(_RESULTS).where(_RESULTS.c.job_id == job_id, value.is_(None)))
    direction = value.asc() if ranking.ascending else value.desc()
    boundary = connection.execute(
        select(value, index)
        .where(_RESULTS.c.job_id == job_id)
        .order_by(direction, index)
        .offset(ranking.top_k - 1)
        .limit(1)
    ).first()
    if boundary is None:  # fewer than top_k rows so far
        return
    worse = value > boundary.sort_value if ranking.ascending else value < boundary.sort_value
    connection.execute(
        delete(_RESULTS).where(
            _RESULTS.c.job_id == job_id,
            or_(worse, and_(value == boundary.sort_value, index > boundary.row_index)),
        )
    )
