"""Dynamic batching: concurrent submissions become one batch of work. It only schedules.

The two knobs are the ones Triton and friends use:
- ``max_size``: rows per batch. Submissions are never split here (callers split a submission
  larger than ``max_size``; app/inference/batch_work.py does), and one never straddles two batches.
- ``max_wait_ms``: once the first submission of a batch is queued, wait at most this long for
  company before running. While a batch is being processed, new submissions queue up; when it
  returns, whatever waited past its deadline goes at once.

One batch is processed at a time per batcher, in a dedicated worker thread, so the event loop
keeps accepting, parsing and answering requests meanwhile (ONNX Runtime releases the GIL and
parallelises inside its calls). What a batch computes is the ``process`` function's business:
for predictions, app/inference/batch_work.py (cache lookups, one featurization per batch, one
ONNX Runtime call per model, the cache hand-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

P = TypeVar("P")  # what a submission carries
A = TypeVar("A")  # what its submitter gets back


@dataclass(slots=True)
class Queued(Generic[P]):
    payload: P
    rows: int
    queued_at: float
    future: asyncio.Future[Any]


class DynamicBatcher(Generic[P, A]):
    """``start()`` inside a running event loop, then ``submit``; ``process`` runs in a worker thread,
    takes the batch's submissions and returns one answer per submission, in order: an Exception as
    an answer fails that submission alone; ``process`` raising fails the whole batch."""

    def __init__(
        self,
        name: str,
        process: Callable[[list[Queued[P]]], Sequence[A | Exception]],
        *,
        max_size: int,
        max_wait_ms: float,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.name = name
        self.process = process
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: deque[Queued[P]] = deque()
        self._queued_rows = 0
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            submission = self._queue.popleft()
            if not submission.future.done():
                submission.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, payload: P, rows: int) -> A:
        if self._arrived is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(Queued(payload, rows, time.perf_counter(), future))
        self._queued_rows += rows
        self._arrived.set()
        return await future

    # -- the batching loop (event loop side) ----------------------------------------------------

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_company()
            batch = self._take_batch()
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self._executor, self.process, batch)
            except Exception as error:
                logger.exception("batch of %d rows failed in %s", sum(s.rows for s in batch), self.name)
                for submission in batch:
                    if not submission.future.done():
                        submission.future.set_exception(error)
                continue
            for submission, answer in zip(batch, answers, strict=True):
                if submission.future.done():
                    continue
                if isinstance(answer, Exception):  # this submission's own failure; the others stand
                    submission.future.set_exception(answer)
                else:
                    submission.future.set_result(answer)

    async def _wait_for_company(self) -> None:
        """Until the batch is full or its oldest submission has waited max_wait."""
        assert self._arrived is not None
        deadline = self._queue[0].queued_at + self.max_wait_s
        while self._queued_rows < self.max_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take_batch(self) -> list[Queued[P]]:
        batch: list[Queued[P]] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the caller went away (client disconnected): skip its rows
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if batch and rows + head.rows > self.max_size:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            rows += head.rows
            batch.append(head)
        return batch
