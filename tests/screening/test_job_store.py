"""The job store's guarantees, on SQLite and PostgreSQL: atomic chunks, leases, cancel, top_k."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, event

from app.store.jobs import CANCELLED, QUEUED, RUNNING, SUCCEEDED, JobStore, Ranking


def rows(indices: range | list[int], value=lambda i: float(i)) -> list[dict]:
    return [
        {
            "row_index": i,
            "formula": f"Li{i + 1}O",
            "composition": f"Li{i + 1}O",
            "sort_value": value(i),
            "payload": {"p": {"x": [value(i), None]}},
        }
        for i in indices
    ]


@pytest.fixture
def jobs(engine: Engine) -> JobStore:
    return JobStore(engine)


def new_job(jobs: JobStore, total: int = 100, **request: object) -> str:
    job_id = f"job{time.monotonic_ns()}"
    jobs.create(
        job_id, {"sort_by": None, **request}, {"x": {"model": "m", "version": "v", "unit": "u"}}, total
    )
    return job_id


def test_a_chunk_and_its_progress_commit_together(jobs: JobStore) -> None:
    job_id = new_job(jobs)
    claimed = jobs.claim("runner-a", lease_s=60)
    assert claimed is not None and claimed.id == job_id and claimed.status == RUNNING
    assert jobs.commit_chunk(job_id, "runner-a", 0, 10, rows(range(10)))
    assert jobs.get(job_id).done == 10
    # A commit that does not start from the stored progress (a replayed chunk) writes nothing.
    assert not jobs.commit_chunk(job_id, "runner-a", 0, 10, rows(range(10)))
    assert jobs.get(job_id).done == 10
    assert jobs.count_results(job_id) == 10


def test_a_live_lease_keeps_other_runners_out_and_an_expired_one_lets_them_resume(jobs: JobStore) -> None:
    job_id = new_job(jobs)
    assert jobs.claim("runner-a", lease_s=60) is not None
    assert jobs.commit_chunk(job_id, "runner-a", 0, 20, rows(range(20)))
    assert jobs.claim("runner-b", lease_s=60) is None  # runner-a is alive
    time.sleep(0.05)
    taken = jobs.claim("runner-b", lease_s=0.01)  # runner-a stopped renewing (it was killed)
    assert taken is not None and taken.done == 20 and taken.attempts == 2
    # The old owner's late commit is refused, and none of its rows land.
    assert not jobs.commit_chunk(job_id, "runner-a", 20, 30, rows(range(20, 30)))
    assert jobs.count_results(job_id) == 20
    assert jobs.commit_chunk(job_id, "runner-b", 20, 100, rows(range(20, 100)))
    assert jobs.finish(job_id, "runner-b", SUCCEEDED)
    finished = jobs.get(job_id)
    assert finished.status == SUCCEEDED and finished.done == 100
    assert [r.row_index for r in jobs.results(finished, 0, 1000)] == list(range(100))


def test_cancel_stops_the_runner_at_its_next_commit(jobs: JobStore) -> None:
    job_id = new_job(jobs)
    jobs.claim("runner-a", lease_s=60)
    assert jobs.commit_chunk(job_id, "runner-a", 0, 10, rows(range(10)))
    assert jobs.cancel(job_id).status == CANCELLED
    assert not jobs.commit_chunk(job_id, "runner-a", 10, 20, rows(range(10, 20)))
    assert not jobs.finish(job_id, "runner-a", SUCCEEDED)
    job = jobs.get(job_id)
    assert job.status == CANCELLED and job.done == 10 and jobs.count_results(job_id) == 10


def test_a_queued_job_cancelled_is_never_claimed(jobs: JobStore) -> None:
    job_id = new_job(jobs)
    jobs.cancel(job_id)
    assert jobs.claim("runner-a", lease_s=60) is None


def test_release_requeues_at_the_committed_progress(jobs: JobStore) -> None:
    job_id = new_job(jobs)
    jobs.claim("runner-a", lease_s=60)
    jobs.commit_chunk(job_id, "runner-a", 0, 30, rows(range(30)))
    assert jobs.release(job_id, "runner-a")
    assert jobs.get(job_id).status == QUEUED
    again = jobs.claim("runner-b", lease_s=60)  # at once: no lease to wait out
    assert again is not None and again.done == 30


def test_jobs_are_claimed_oldest_first(jobs: JobStore) -> None:
    first, second = new_job(jobs), new_job(jobs)
    assert jobs.claim("runner-a", lease_s=60).id == first
    assert jobs.claim("runner-b", lease_s=60).id == second


@pytest.mark.parametrize("ascending", [True, False])
def test_top_k_keeps_exactly_the_best_rows_across_chunks(jobs: JobStore, ascending: bool) -> None:
    job_id = new_job(jobs, total=400, sort_by="x", ascending=ascending, top_k=25)
    jobs.claim("runner-a", lease_s=60)
    value = lambda i: float((i * 37) % 101)  # noqa: E731  (ties: equal values at different rows)
    for start in range(0, 400, 50):
        assert jobs.commit_chunk(
            job_id,
            "runner-a",
            start,
            start + 50,
            rows(range(start, start + 50), value),
            Ranking(ascending, 25),
        )
        assert jobs.count_results(job_id) == min(25, start + 50)
    expected = sorted(range(400), key=lambda i: (value(i) if ascending else -value(i), i))[:25]
    got = jobs.results(jobs.get(job_id), 0, 100)
    assert [r.row_index for r in got] == expected


def test_results_order_puts_rows_without_a_value_last(jobs: JobStore) -> None:
    job_id = new_job(jobs, total=6, sort_by="x", ascending=False)
    jobs.claim("runner-a", lease_s=60)
    values = [3.0, None, 5.0, None, 1.0, 5.0]
    jobs.commit_chunk(job_id, "runner-a", 0, 6, rows(range(6), lambda i: values[i]))
    got = jobs.results(jobs.get(job_id), 0, 10)
    assert [r.row_index for r in got] == [2, 5, 0, 4, 1, 3]
    assert [r.row_index for r in jobs.results(jobs.get(job_id), 2, 2)] == [0, 4]


@pytest.mark.parametrize("ascending", [True, False])
def test_every_page_by_offset_or_key_is_a_window_of_the_whole_order(jobs: JobStore, ascending: bool) -> None:
    """Ranked rows by value (ties in input order), then the rows without a value in input order,
    whichever way a page is asked for: the two parts are read separately (index order)."""
    job_id = new_job(jobs, total=30, sort_by="x", ascending=ascending)
    jobs.claim("runner-a", lease_s=60)
    values = [None if i % 4 == 1 else float(i % 7) for i in range(30)]
    jobs.commit_chunk(job_id, "runner-a", 0, 30, rows(range(30), lambda i: values[i]))
    job = jobs.get(job_id)
    ranked = sorted(
        (i for i in range(30) if values[i] is not None),
        key=lambda i: (values[i] * (1 if ascending else -1), i),
    )
    expected = ranked + [i for i in range(30) if values[i] is None]
    assert [r.row_index for r in jobs.results(job, 0, 100)] == expected
    for offset in range(0, 32):
        for limit in (1, 4, 9):
            got = [r.row_index for r in jobs.results(job, offset, limit)]
            assert got == expected[offset : offset + limit], (offset, limit)
    walked, last = [], None
    while page := jobs.results(job, limit=4, after=last):
        walked += [r.row_index for r in page]
        last = page[-1]
    assert walked == expected
    by_row = {r.row_index: r for r in jobs.results(job, 0, 100)}
    for position in range(0, 30, 3):  # a cursor and an offset past it, across the ranked/tail boundary
        cursor = by_row[expected[position]]
        for offset in (0, 2, 7, 25):
            got = [r.row_index for r in jobs.results(job, offset, 5, after=cursor)]
            assert got == expected[position + 1 + offset : position + 6 + offset], (position, offset)


@pytest.mark.parametrize("ascending", [True, False])
def test_a_sorted_page_walks_an_index_and_never_sorts_the_job(jobs: JobStore, ascending: bool) -> None:
    """Each page of a sorted job sorted all of its rows (a million-row job: 1 s a page; issue 17,
    defect 6). SQLite's plan for every query of a page now reads an index in order."""
    if jobs.engine.dialect.name != "sqlite":
        pytest.skip("query plans are checked on SQLite; PostgreSQL picks plans by its statistics")
    job_id = new_job(jobs, total=50, sort_by="x", ascending=ascending)
    jobs.claim("runner-a", lease_s=60)
    jobs.commit_chunk(
        job_id, "runner-a", 0, 50, rows(range(50), lambda i: None if i % 5 == 0 else float(i % 9))
    )
    job = jobs.get(job_id)
    statements = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "FROM screening_results" in statement and "count(" not in statement:
            statements.append((statement, parameters))

    event.listen(jobs.engine, "before_cursor_execute", record)
    try:
        first = jobs.results(job, limit=10)
        jobs.results(job, limit=10, after=first[-1])
        jobs.results(job, limit=100, after=first[-1])  # runs into the rows without a value
    finally:
        event.remove(jobs.engine, "before_cursor_execute", record)
    assert statements
    with jobs.engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            details = " | ".join(str(row[-1]) for row in plan)
            assert "TEMP B-TREE" not in details, details
            assert "ix_screening_results_rank" in details or "PRIMARY KEY" in details, details


def test_a_renew_never_moves_the_heartbeat_back(jobs: JobStore) -> None:
    """A renew that waited behind a long commit wrote its earlier clock over the commit's fresher
    one, and a second runner took the live job over (review, 2026-12-02)."""
    from sqlalchemy import select, update

    from app.store.jobs import ScreeningJobRecord

    job_id = new_job(jobs)
    jobs.claim("runner-a", lease_s=60)
    fresher = time.time() + 100  # what the commit that the renew waited for wrote
    with jobs._engine.begin() as connection:
        connection.execute(
            update(ScreeningJobRecord).where(ScreeningJobRecord.id == job_id).values(heartbeat=fresher)
        )
    assert jobs.renew(job_id, "runner-a")
    with jobs._engine.connect() as connection:
        stored = connection.execute(
            select(ScreeningJobRecord.heartbeat).where(ScreeningJobRecord.id == job_id)
        ).scalar_one()
    assert stored == pytest.approx(fresher)
    assert jobs.claim("runner-b", lease_s=1.0) is None


def test_a_big_formula_jobs_inputs_are_decoded_once_across_its_turns(jobs: JobStore) -> None:
    """10M inputs took 1.4 s of json.loads (the GIL held) at every turn the job took back."""
    from app.screening.runner import KEEP_INPUTS_FROM_ROWS, ScreeningRunner

    def registry_never_needed():
        raise AssertionError("no model is loaded to read inputs")

    runner = ScreeningRunner(jobs, registry_never_needed)
    big = ["Fe2O3", "NaCl"] * (KEEP_INPUTS_FROM_ROWS // 2)
    jobs.create("big", {"sort_by": None}, {}, len(big), big)
    jobs.create("small", {"sort_by": None}, {}, 3, ["KBr", "MgO", "CaO"])
    first = runner._inputs("big")
    assert first == big and runner._inputs("small") == ["KBr", "MgO", "CaO"]
    assert runner._inputs("big") is first  # the small job's turn did not drop it
    assert runner._inputs("small") is not runner._inputs("small")  # small lists are just read


def test_inputs_read_back_in_order_across_lines_and_from_the_one_array_format() -> None:
    import json
    import zlib

    from app.store.jobs import INPUT_LINE_ITEMS, decode_inputs, encode_inputs

    many = [f"Li{i}O\n" if i % 7 == 0 else f"Na{i}Cl" for i in range(2 * INPUT_LINE_ITEMS + 5)]
    assert decode_inputs(encode_inputs(many)) == many and decode_inputs(encode_inputs([])) == []
    written_before = zlib.compress(json.dumps(["Fe2O3", "a\nb"], separators=(",", ":")).encode(), 6)
    assert decode_inputs(written_before) == ["Fe2O3", "a\nb"]


def job_of(jobs: JobStore, client: str) -> str:
    job_id = f"job{time.monotonic_ns()}"
    jobs.create(
        job_id, {"sort_by": None}, {"x": {"model": "m", "version": "v", "unit": "u"}}, 100, None, client
    )
    return job_id


def test_turns_go_round_the_clients_not_only_the_jobs(jobs: JobStore) -> None:
    """Client a queued three jobs before client b queued one: after a's first turn, b's job runs
    next, not a's second (turns by job alone kept b waiting behind all of a's)."""
    first, second, third = (job_of(jobs, "a") for _ in range(3))
    other = job_of(jobs, "b")
    assert jobs.claim("runner-1", lease_s=60).id == first
    assert jobs.give_turn(first, "runner-1")
    assert jobs.claim("runner-1", lease_s=60).id == other  # b was never served; a just was
    assert jobs.claim("runner-2", lease_s=60).id == second  # then a's oldest waiting job
    # b's next job waits while b is being served (its first runs on runner-1); a's turn came before.
    later = job_of(jobs, "b")
    assert jobs.give_turn(second, "runner-2")
    assert jobs.claim("runner-2", lease_s=60).id == third
    assert jobs.get(later).status == QUEUED
