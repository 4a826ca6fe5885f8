"""Cache writes off the request path: a bounded queue drained by one background thread.

``submit`` only appends to a queue under a lock that is never held during I/O, so a request
never waits for the database. The thread merges what is queued into chunks, writes them, and
while the database is down keeps the rows and retries with exponential back-off (with jitter, so
replicas do not hammer a database that just came back). When more rows wait than the bound
allows, the oldest are dropped and counted: a cache may forget, a service must not run out of
memory. Nor of disk: past ``max_rows`` cached rows the oldest written are deleted, down to 90%
of the bound (distinct formulas are endless; one client sending them would fill the disk).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping

from app.store.database import StoreUnavailable
from app.store.predictions import CachedPrediction, PredictionStore

logger = logging.getLogger(__name__)

_Batch = tuple[str, list[tuple[str, CachedPrediction]]]  # (model version, rows)


class CacheWriter:
    def __init__(
        self,
        store: PredictionStore,
        *,
        max_pending_rows: int = 1_000_000,
        chunk_rows: int = 10_000,
        max_rows: int = 0,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
    ) -> None:
        """``max_rows``: the most rows the database keeps (0: no bound)."""
        if max_pending_rows < 1 or chunk_rows < 1 or max_rows < 0:
            raise ValueError("max_pending_rows and chunk_rows must be positive, max_rows not negative")
        self._store = store
        self._max_rows = max_rows
        self._stored: int | None = None  # rows in the database as last counted, plus those added since
        self._max_pending_rows = max_pending_rows
        self._chunk_rows = chunk_rows
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s

        self._condition = threading.Condition()
        self._queue: deque[_Batch] = deque()
        self._queued_rows = 0
        self._in_flight_rows = 0
        self._closing = False
        self._close_deadline = float("inf")

        self.dropped = 0  # rows given up: queue full, or still unwritten when close() ran out of time
        self.written = 0  # rows handed to the database (including ones it already had)
        self.evicted = 0  # oldest rows deleted to keep the database within max_rows
        self.failures = 0  # failed write attempts since the last success
        self.last_error: str | None = None

        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows accepted but not written yet (queued or being written)."""
        with self._condition:
            return self._queued_rows + self._in_flight_rows

    def submit(self, model_version: str, rows: Mapping[str, CachedPrediction]) -> None:
        """Queue rows for writing; returns at once, whatever the database is doing."""
        items = list(rows.items())  # a copy: the caller may reuse its mapping
        if not items:
            return
        with self._condition:
            if self._closing:
                self.dropped += len(items)
                return
            for start in range(0, len(items), self._chunk_rows):
                self._queue.append((model_version, items[start : start + self._chunk_rows]))
            self._queued_rows += len(items)
            self._drop_oldest_beyond_bound()
            self._condition.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is written; False if that did not happen in time."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._queued_rows + self._in_flight_rows == 0 or not self._thread.is_alive(),
                timeout,
            ) and (self._queued_rows + self._in_flight_rows == 0)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the thread."""
        with self._condition:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._condition.notify_all()
        self._thread.join(timeout + 1.0)

    def _run(self) -> None:
        backoff = self._initial_backoff_s
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._closing)
                if self._closing and (not self._queue or time.monotonic() >= self._close_deadline):
                    self._give_up_remaining()
                    return
                batches = self._take_chunk()
            failed = self._write(batches)
            with self._condition:
                self._in_flight_rows = 0
                if failed:
                    self._queue.extendleft(reversed(failed))
                    self._queued_rows += sum(len(rows) for _, rows in failed)
                    self._drop_oldest_beyond_bound()
                self._condition.notify_all()
                if not failed:
                    backoff = self._initial_backoff_s
                    continue
                # Sleep on the condition so close() can cut the wait short.
                wait_s = random.uniform(0.5, 1.0) * backoff
                if self._closing:
                    wait_s = min(wait_s, max(0.0, self._close_deadline - time.monotonic()))
                self._condition.wait(wait_s)
            backoff = min(backoff * 2, self._max_backoff_s)

    def _take_chunk(self) -> list[_Batch]:
        """Pop queued batches worth at most chunk_rows rows (at least one batch). Lock held."""
        batches = [self._queue.popleft()]
        rows = len(batches[0][1])
        while self._queue and rows + len(self._queue[0][1]) <= self._chunk_rows:
            batches.append(self._queue.popleft())
            rows += len(batches[-1][1])
        self._queued_rows -= rows
        self._in_flight_rows = rows
        return batches

    def _write(self, batches: list[_Batch]) -> list[_Batch]:
        """Save the batches, one statement group per model version; return those left unwritten."""
        by_version: dict[str, dict[str, CachedPrediction]] = {}
        for version, rows in batches:
            by_version.setdefault(version, {}).update(rows)
        for position, (version, rows) in enumerate(by_version.items()):
            try:
                inserted = self._store.save(version, rows)
                self._keep_within_bound(inserted)
            except StoreUnavailable as error:
                self._note_failure(str(error))
                return [(v, list(r.items())) for v, r in list(by_version.items())[position:]]
            except Exception as error:  # a bug must not kill the thread or jam the queue forever
                logger.exception("cache write failed unexpectedly; %d rows dropped", len(rows))
                with self._condition:
                    self.dropped += len(rows)
                self._note_failure(f"{type(error).__name__}: {error}")
                continue
            with self._condition:
                self.written += len(rows)
                if self.failures:
                    logger.info("cache writes resumed after %d failed attempts", self.failures)
                self.failures = 0
                self.last_error = None
        return []

    def _keep_within_bound(self, inserted: int) -> None:
        """Past max_rows, delete the oldest rows down to 90% of it (so not after every write).
        The count is the database's own, taken again after each eviction: other replicas write too."""
        if not self._max_rows:
            return
        if self._stored is None:
            self._stored = self._store.count()
        else:
            self._stored += inserted
        if self._stored <= self._max_rows:
            return
        evicted = self._store.drop_oldest(self._stored - self._max_rows * 9 // 10)
        self._stored = self._store.count()
        with self._condition:
            self.evicted += evicted
        logger.info(
            "prediction cache at its bound: deleted the %d oldest rows, %d kept", evicted, self._stored
        )

    def _note_failure(self, message: str) -> None:
        with self._condition:
            if self.failures == 0:
                logger.warning("cache write failed, keeping the rows and retrying: %s", message)
            self.failures += 1
            self.last_error = message

    def _drop_oldest_beyond_bound(self) -> None:
        """Lock held."""
        while self._queued_rows + self._in_flight_rows > self._max_pending_rows and self._queue:
            _, rows = self._queue.popleft()
            self._queued_rows -= len(rows)
            self.dropped += len(rows)

    def _give_up_remaining(self) -> None:
        """Lock held: close() ran out of time (or found nothing to do)."""
        if self._queued_rows:
            logger.warning("cache writer closing with %d unwritten rows", self._queued_rows)
        self.dropped += self._queued_rows
        self._queue.clear()
        self._queued_rows = 0
        self._condition.notify_all()
