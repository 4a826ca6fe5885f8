"""The most recent predictions, in process memory, in front of the SQL prediction cache.

The SQL cache is the record: it survives restarts and is shared by replicas. But asking it costs
a query per batch and a trip through the model's batcher, and a warm service answers mostly
repeats (dashboards polling a formula, a screen run twice, clients retrying). This bounded LRU
answers those from memory: ``Predictor.predict_one`` looks here on the event loop before it
queues anything, and the batchers look here before they query the database. It also keeps
answering repeats while the database is down.

Keyed like the SQL cache, by (model version, composition key), so a new model version never
sees an old version's values. Thread-safe: the event loop reads it, the batchers' worker
threads read and fill it; the lock is held for dictionary operations only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from app.store.predictions import CachedPrediction


class RecentPredictions:
    def __init__(self, max_rows: int) -> None:
        """``max_rows`` 0 keeps nothing (every lookup misses)."""
        if max_rows < 0:
            raise ValueError("max_rows must be >= 0")
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple[str, str], CachedPrediction] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, model_version: str, key: str) -> CachedPrediction | None:
        if not self.max_rows:
            return None
        with self._lock:
            row = self._rows.get((model_version, key))
            if row is not None:
                self._rows.move_to_end((model_version, key))
            return row

    def get_many(self, model_version: str, keys: Iterable[str]) -> dict[str, CachedPrediction]:
        """The remembered rows among ``keys`` (missing keys are absent)."""
        found: dict[str, CachedPrediction] = {}
        if not self.max_rows:
            return found
        rows = self._rows
        with self._lock:
            for key in keys:
                row = rows.get((model_version, key))
                if row is not None:
                    rows.move_to_end((model_version, key))
                    found[key] = row
        return found

    def put_many(self, model_version: str, rows: Mapping[str, CachedPrediction]) -> None:
        """Remember ``rows``; the least recently used rows beyond ``max_rows`` are forgotten."""
        if not self.max_rows or not rows:
            return
        remembered = self._rows
        with self._lock:
            for key, row in rows.items():
                remembered[(model_version, key)] = row
                remembered.move_to_end((model_version, key))
            while len(remembered) > self.max_rows:
                remembered.popitem(last=False)
