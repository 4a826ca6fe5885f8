"""How the serving process uses Python's cyclic garbage collector.

Collections were the largest cost of a busy server (measured with ``benchmarks/soak.py``):
- Start-up objects (pymatgen's tables, ORT, pydantic schemas) live as long as the process, so
  they are frozen: a collection scans only what serving allocated.
- At Python's thresholds (700, 10, 10) every young collection promotes whatever the 64 requests
  in flight hold at that instant, so a full collection came every ~650 cold requests, and each
  one scans every remembered formula and prediction (the parse memo, the in-memory prediction
  cache). After 150,000 distinct formulas the server spent about half its time collecting (11 s
  of 21), in pauses of up to 280 ms (p99 316 ms). Collecting the young generation every 50,000 net allocations
  leaves in-flight objects the time to die first, and caches at their bounds free about as much
  as they allocate, so the collector then seldom runs at all.
Every pause is counted (``ibrnet_gc_*`` in /metrics), so a deployment sees what collecting costs it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

PYTHON_DEFAULT_THRESHOLDS = (700, 10, 10)
GENERATIONS = 3


class PauseLog:
    """Collections per generation: how many, their total and their longest pause.

    Plain lists, no lock: the collector calls back on whichever thread allocated, which may be
    holding any lock at that moment (a metric's, for one), and never runs two collections at once.
    """

    def __init__(self) -> None:
        self.collections = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        """For ``gc.callbacks``."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation, pause = info["generation"], time.perf_counter() - self._started
        self.collections[generation] += 1
        self.seconds[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def snapshot(self) -> list[tuple[int, float, float]]:
        return list(zip(self.collections, self.seconds, self.longest, strict=True))


@contextlib.contextmanager
def serving_collector(thresholds: tuple[int, int, int]) -> Iterator[PauseLog]:
    """Freeze what start-up loaded, collect at ``thresholds`` and log every pause while serving;
    Python's previous thresholds come back afterwards (tests start many apps in one process)."""
    pauses = PauseLog()
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    gc.callbacks.append(pauses.callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(pauses.callback)
        gc.set_threshold(*previous)
