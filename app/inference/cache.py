"""The service's side of the prediction cache: bulk lookups, hand-off of new rows, back-off.

- Recent predictions are answered from process memory (app/inference/recent.py) first; the
  event loop may ask that layer (``recall``), never the database.
- Database lookups are made by the model batchers' worker threads, once per batch (one query per
  chunk of keys), never on the event loop and never once per request.
- New rows go to the CacheWriter (its own thread, bounded queue): nothing waits for a write.
- When the database fails, its lookups are skipped (what memory does not hold is computed) and
  a probe thread pings the database until it answers again. Requests never wait on a dead
  database's connect timeout, and the cache comes back by itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence

from app.inference.metrics import ServiceMetrics
from app.inference.recent import RecentPredictions
from app.store.database import StoreUnavailable
from app.store.predictions import CachedPrediction, PredictionStore
from app.store.writer import CacheWriter

logger = logging.getLogger(__name__)

# How often the probe pings a database that failed.
PROBE_INTERVAL_S = 1.0


class PredictionCache:
    def __init__(
        self,
        store: PredictionStore,
        writer: CacheWriter | None,
        metrics: ServiceMetrics,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        recent: RecentPredictions | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.recent = recent if recent is not None else RecentPredictions(0)
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self._closed = threading.Event()
        self.available = True
        self.last_error: str | None = None
        self._ping_in_flight: asyncio.Future[bool] | None = None
        self.down_since: float | None = None

    def recall(self, model_version: str, key: str) -> CachedPrediction | None:
        """The row for ``key`` if it is in memory (never asks the database; fine on the event loop)."""
        return self.recent.get(model_version, key)

    def lookup(self, model_version: str, keys: Sequence[str]) -> dict[str, CachedPrediction]:
        """Cached rows among ``keys`` (blocking; call it off the event loop): from memory, then from
        the database. Only what memory holds while the database is down: the caller then computes
        the rest."""
        if not keys:
            return {}
        found = self.recent.get_many(model_version, keys)
        rest = [key for key in keys if key not in found] if found else keys
        if not rest:
            return found
        if not self.available:
            self._metrics.cache_errors.labels(operation="lookup_skipped").inc()
            return found
        try:
            stored = self.store.lookup(model_version, rest)
        except StoreUnavailable as error:
            self._metrics.cache_errors.labels(operation="lookup").inc()
            self._mark_down(str(error))
            return found
        self.recent.put_many(model_version, stored)
        return found | stored if found else stored

    def save(self, model_version: str, rows: Mapping[str, CachedPrediction]) -> None:
        """Remember new rows and queue them for the background writer; returns at once. Like the
        database (PredictionStore.save), memory keeps no non-finite value."""
        self.recent.put_many(model_version, {k: row for k, row in rows.items() if math.isfinite(row.value)})
        if rows and self.writer is not None:
            self.writer.submit(model_version, rows)

    async def ping(self) -> bool:
        """Ask the database now (for /ready); updates the availability state either way.

        One check at a time: concurrent callers share the one in flight, so a flood of /ready (a
        public endpoint) is one heartbeat write at a time, not one per request or thread."""
        if self._ping_in_flight is None or self._ping_in_flight.done():
            self._ping_in_flight = asyncio.ensure_future(asyncio.to_thread(self.store.ping))
        answered = await asyncio.shield(self._ping_in_flight)
        if answered:
            self._mark_up()
        else:
            self._mark_down(self.store.last_error or "the database does not answer")
        return answered

    def close(self) -> None:
        self._closed.set()
        if self._probe is not None:
            self._probe.join(timeout=5)

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            self.last_error = reason
            if self.available:
                self.available = False
                self.down_since = time.time()
                logger.warning("prediction cache unavailable, predicting without it: %s", reason)
            if self._probe is None or not self._probe.is_alive():
                self._probe = threading.Thread(target=self._probe_until_up, name="cache-probe", daemon=True)
                self._probe.start()

    def _mark_up(self) -> None:
        with self._lock:
            if not self.available:
                logger.info(
                    "prediction cache is back after %.1f s", time.time() - (self.down_since or time.time())
                )
            self.available = True
            self.down_since = None
            self.last_error = None

    def _probe_until_up(self) -> None:
        while not self.available and not self._closed.wait(self._probe_interval_s):
            if self.store.ping():
                self._mark_up()
