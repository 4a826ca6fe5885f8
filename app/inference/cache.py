"""The service's side of the prediction cache: bulk lookups, hand-off of new rows, back-off.

- Lookups are made by the model batchers' worker threads, once per batch (one query per chunk
  of keys), never on the event loop and never once per request.
- New rows go to the CacheWriter (its own thread, bounded queue): nothing waits for a write.
- When the database fails, lookups are skipped (every prediction is computed) and a probe
  thread pings the database until it answers again. Requests never wait on a dead database's
  connect timeout, and the cache comes back by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence

from app.inference.metrics import ServiceMetrics
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
    ) -> None:
        self.store = store
        self.writer = writer
        self._metrics = metrics
        self._probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self._closed = threading.Event()
        self.available = True
        self.last_error: str | None = None
        self.down_since: float | None = None

    def lookup(self, model_version: str, keys: Sequence[str]) -> dict[str, CachedPrediction]:
        """Cached rows among ``keys`` (blocking; call it off the event loop). {} while the
        database is down: the caller then computes every prediction."""
        if not keys:
            return {}
        if not self.available:
            self._metrics.cache_errors.labels(operation="lookup_skipped").inc()
            return {}
        try:
            return self.store.lookup(model_version, keys)
        except StoreUnavailable as error:
            self._metrics.cache_errors.labels(operation="lookup").inc()
            self._mark_down(str(error))
            return {}

    def save(self, model_version: str, rows: Mapping[str, CachedPrediction]) -> None:
        """Queue new rows for the background writer; returns at once."""
        if rows and self.writer is not None:
            self.writer.submit(model_version, rows)

    async def ping(self) -> bool:
        """Ask the database now (for /ready); updates the availability state either way."""
        answered = await asyncio.to_thread(self.store.ping)
        if answered:
            self._mark_up()
        else:
            self._mark_down(self.last_error or "the database does not answer")
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
