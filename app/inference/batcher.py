"""Dynamic batching: concurrent submissions for one model become one ONNX Runtime call.

The two knobs are the ones Triton and friends use:
- ``max_size``: rows per call. A submission never straddles two calls unless it alone is
  larger than ``max_size`` (then it is split into ``max_size`` slices).
- ``max_wait_ms``: once the first submission of a batch is queued, wait at most this long for
  company before running. While a call is running, new submissions queue up; when it returns,
  whatever waited past its deadline goes at once.

One batch is processed at a time per model, in a dedicated worker thread, so the event loop
keeps accepting, parsing and answering requests meanwhile (ORT releases the GIL and
parallelises inside the call with its own intra-op threads).

Two kinds of submission share a batch:
- ``submit(features)``: rows of features in, model outputs out;
- ``submit_formulas(formulas)``: parsed formulas in, PropertyPredictions out. For these the
  worker does the whole per-batch job once for everybody in the batch: one cache lookup,
  one featurizer call for the misses, the ORT call, one hand-off of the new rows to the cache
  writer. Per request, the event loop only queues its formulas and awaits one future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.chemistry.formula import ParsedFormula
from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.registry import LoadedModel
from app.inference.results import PropertyPrediction
from app.store.predictions import CachedPrediction

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Submission:
    rows: int
    features: np.ndarray | None
    formulas: Sequence[ParsedFormula] | None
    future: asyncio.Future[Any]
    queued_at: float


class DynamicBatcher:
    """One per model; ``start()`` inside a running event loop, then submit."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_size: int,
        max_wait_ms: float,
        metrics: ServiceMetrics,
        cache: PredictionCache | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.model = model
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.cache = cache
        self._queue: deque[_Submission] = deque()
        self._queued_rows = 0
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model.name}")
        # Metric children resolved once: .labels() takes a lock and a dict lookup on every call.
        self._m_batch_size = metrics.batch_size.labels(model=model.name)
        self._m_submissions = metrics.batch_submissions.labels(model=model.name)
        self._m_queue_seconds = metrics.batch_queue_seconds.labels(model=model.name)
        self._m_inference_seconds = metrics.inference_seconds.labels(model=model.name)
        self._m_failures = metrics.inference_failures.labels(model=model.name)
        self._m_hits = metrics.cache_hits.labels(property=model.property)
        self._m_misses = metrics.cache_misses.labels(property=model.property)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model.name}")

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

    async def submit(self, features: np.ndarray) -> np.ndarray:
        """float32 [n, width] -> float32 [n, 2] (value, standard deviation or NaN)."""
        rows = features.shape[0]
        if rows == 0:
            return np.empty((0, 2), dtype=np.float32)
        if rows > self.max_size:
            parts = [features[i : i + self.max_size] for i in range(0, rows, self.max_size)]
            return np.concatenate(await asyncio.gather(*(self.submit(part) for part in parts)))
        return await self._enqueue(rows, features, None)

    async def submit_formulas(self, formulas: Sequence[ParsedFormula]) -> list[PropertyPrediction]:
        """This model's prediction for each formula, from the cache where it has one."""
        if not formulas:
            return []
        if len(formulas) > self.max_size:
            parts = [formulas[i : i + self.max_size] for i in range(0, len(formulas), self.max_size)]
            answers = await asyncio.gather(*(self.submit_formulas(part) for part in parts))
            return [prediction for part in answers for prediction in part]
        return await self._enqueue(len(formulas), None, formulas)

    async def _enqueue(
        self, rows: int, features: np.ndarray | None, formulas: Sequence[ParsedFormula] | None
    ) -> Any:
        if self._arrived is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submission(rows, features, formulas, future, time.perf_counter()))
        self._queued_rows += rows
        self._m_submissions.inc()
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
            started = time.perf_counter()
            for submission in batch:
                self._m_queue_seconds.observe(started - submission.queued_at)
            try:
                answers = await loop.run_in_executor(self._executor, self._process, batch)
            except Exception as error:
                self._m_failures.inc()
                logger.exception(
                    "batch of %d rows failed for model %s", sum(s.rows for s in batch), self.model.name
                )
                for submission in batch:
                    if not submission.future.done():
                        submission.future.set_exception(error)
                continue
            for submission, answer in zip(batch, answers, strict=True):
                if not submission.future.done():
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

    def _take_batch(self) -> list[_Submission]:
        batch: list[_Submission] = []
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

    # -- one batch (worker thread side) --------------------------------------------------------

    def _process(self, batch: list[_Submission]) -> list[Any]:
        """Cache lookup, featurize, one ORT call, cache hand-off; one answer per submission."""
        model = self.model
        unique: dict[str, ParsedFormula] = {}
        for submission in batch:
            if submission.formulas is not None:
                for formula in submission.formulas:
                    unique.setdefault(formula.canonical_key, formula)
        cache = self.cache
        cached = cache.lookup(model.cache_version, list(unique)) if cache is not None and unique else {}
        misses = [formula for key, formula in unique.items() if key not in cached]

        blocks = [model.featurizer.transform(misses)] if misses else []
        blocks += [s.features for s in batch if s.features is not None]
        outputs = self._run_model(blocks)

        # One PropertyPrediction per composition, shared by every request that asked for it.
        predictions = {key: served_prediction(model, row, cached=True) for key, row in cached.items()}
        fresh: dict[str, CachedPrediction] = {}
        for formula, (value, uncertainty) in zip(misses, outputs[: len(misses)].tolist(), strict=True):
            row = CachedPrediction(value, None if math.isnan(uncertainty) else uncertainty)
            fresh[formula.canonical_key] = row
            predictions[formula.canonical_key] = served_prediction(model, row, cached=False)
        if fresh and self.cache is not None:
            self.cache.save(model.cache_version, fresh)
        if cached:
            self._m_hits.inc(len(cached))
        if misses:
            self._m_misses.inc(len(misses))

        answers: list[Any] = []
        offset = len(misses)
        for submission in batch:
            if submission.formulas is not None:
                answers.append([predictions[formula.canonical_key] for formula in submission.formulas])
            else:
                answers.append(outputs[offset : offset + submission.rows])
                offset += submission.rows
        return answers

    def _run_model(self, blocks: list[np.ndarray]) -> np.ndarray:
        if not blocks:
            return np.empty((0, 2), dtype=np.float32)
        features = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        started = time.perf_counter()
        outputs = self.model.run(features)
        self._m_inference_seconds.observe(time.perf_counter() - started)
        self._m_batch_size.observe(features.shape[0])
        return outputs


def served_prediction(model: LoadedModel, row: CachedPrediction, *, cached: bool) -> PropertyPrediction:
    """A cache row (or a fresh model output) as the service answers it."""
    return model.answer(row.value, row.uncertainty, cached=cached)
