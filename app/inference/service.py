"""What the app's lifespan starts and stops: models, batchers, the store and its writer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from app.inference.batch_work import Answer, PredictionRequest, prediction_batchers
from app.inference.batcher import DynamicBatcher
from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.predictor import Predictor
from app.inference.recent import RecentPredictions
from app.inference.registry import ModelRegistry
from app.settings import Settings
from app.stability.service import load_stability
from app.store.database import StoreUnavailable, create_schema, make_engine
from app.store.predictions import PredictionStore
from app.store.writer import CacheWriter

logger = logging.getLogger(__name__)

# On shutdown, queued cache rows get this long to reach the database; a database that is down
# gets only a moment (a restart must not hang on it; the rows are recomputed when asked again).
WRITER_FLUSH_TIMEOUT_S = 10.0
WRITER_FLUSH_TIMEOUT_DOWN_S = 0.5


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    engine: Engine
    store: PredictionStore
    writer: CacheWriter
    batchers: dict[str, DynamicBatcher[PredictionRequest, Answer]]  # feature set -> its batcher
    predictor: Predictor

    @classmethod
    async def start(cls, settings: Settings, metrics: ServiceMetrics) -> Services:
        registry = await asyncio.to_thread(
            ModelRegistry.load,
            settings.models_dir,
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
            warmup_rows=settings.batch_max_size,
        )
        metrics.models_loaded.set(len(registry.by_property))
        metrics.models_failed.set(len(registry.failures))
        if not registry.by_property:
            logger.error("no model loaded from %s: %s", settings.models_dir, registry.failures)

        # A bad hull reference stops the start-up here, with the row that is wrong, before anything
        # that would need stopping (batchers, the database engine) has started.
        stability = await asyncio.to_thread(load_stability, settings, registry)
        engine = make_engine(settings.database_url)
        try:
            await asyncio.to_thread(create_schema, engine)
        except StoreUnavailable as error:
            # Not fatal: predictions are served without the cache until the database answers.
            logger.warning("database unavailable at start-up: %s", error)
        store = PredictionStore(engine)
        writer = CacheWriter(store, max_rows=settings.cache_max_rows)
        metrics.watch_pending_writes(lambda: writer.pending)
        # One cache for the batchers (their worker threads look rows up) and the predictor.
        recent = RecentPredictions(settings.memory_cache_rows)
        metrics.watch_remembered_rows(lambda: len(recent))
        cache = PredictionCache(store, writer, metrics, recent=recent)

        batchers = prediction_batchers(
            registry.models,
            metrics,
            cache,
            max_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
        )
        for batcher in batchers.values():
            batcher.start()
        predictor = Predictor(
            registry,
            store,
            writer,
            batchers,
            metrics,
            cache=cache,
            max_formula_length=settings.max_formula_length,
            stability=stability,
        )
        return cls(settings, registry, engine, store, writer, batchers, predictor)

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        self.predictor.close()
        # Rows computed before shutdown should be cached for the next start (cached: true).
        database_up = self.predictor.cache is not None and self.predictor.cache.available
        timeout = WRITER_FLUSH_TIMEOUT_S if database_up else WRITER_FLUSH_TIMEOUT_DOWN_S
        await asyncio.to_thread(self.writer.flush, timeout)
        await asyncio.to_thread(self.writer.close, WRITER_FLUSH_TIMEOUT_DOWN_S)
        self.engine.dispose()
