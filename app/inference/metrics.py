"""Prometheus metrics of the service: one registry per app, so several apps (tests) never collide.

Batching is meant to be visible: ``ibrnet_batch_size`` is observed once per ONNX Runtime call
with the rows it carried, so ``ibrnet_batch_size_sum / ibrnet_batch_size_count`` is the mean
achieved batch size, and ``ibrnet_batch_submissions_total`` against ``ibrnet_batch_size_count``
is the inference-count versus execution-count pair that Triton users know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from app.collector import PauseLog

# Rows per ORT call: powers of two up to well past BATCH_MAX_SIZE's default (1024).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Queue and inference times of a service whose latency budget is tens of milliseconds.
FAST_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REQUEST_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Every metric the service exports, registered on its own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        # HTTP layer (recorded by app.api.middleware for every request, errors included).
        self.http_requests = Counter(
            "ibrnet_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=registry
        )
        self.http_request_seconds = Histogram(
            "ibrnet_http_request_duration_seconds",
            "Time from request start to the end of the response",
            ["route"],
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry,
        )
        self.http_failures = Counter(
            "ibrnet_http_request_failures",
            "Requests answered with an error body, by error code",
            ["route", "code"],
            registry=registry,
        )

        # Dynamic batcher (app.inference.batcher), one label value per model.
        self.batch_size = Histogram(
            "ibrnet_batch_size",
            "Rows per ONNX Runtime call (the achieved batch size)",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_submissions = Counter(
            "ibrnet_batch_submissions",
            "Feature blocks submitted to the batcher (merged into fewer ONNX Runtime calls)",
            ["model"],
            registry=registry,
        )
        self.batch_queue_seconds = Histogram(
            "ibrnet_batch_queue_seconds",
            "Time a submission waited in the batcher before its ONNX Runtime call started",
            ["model"],
            buckets=FAST_SECONDS_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "ibrnet_inference_seconds",
            "Duration of one ONNX Runtime call",
            ["model"],
            buckets=FAST_SECONDS_BUCKETS,
            registry=registry,
        )
        self.inference_failures = Counter(
            "ibrnet_inference_failures", "ONNX Runtime calls that raised", ["model"], registry=registry
        )

        # Prediction cache and inputs (app.inference.predictor, app.inference.cache).
        self.cache_hits = Counter(
            "ibrnet_cache_hits", "Predictions answered from the cache", ["property"], registry=registry
        )
        self.cache_misses = Counter(
            "ibrnet_cache_misses", "Predictions computed by a model", ["property"], registry=registry
        )
        self.cache_errors = Counter(
            "ibrnet_cache_errors",
            "Cache operations skipped or failed because the database was unavailable",
            ["operation"],
            registry=registry,
        )
        self.formula_errors = Counter(
            "ibrnet_formula_errors", "Formulas refused, by error code", ["code"], registry=registry
        )
        self.cache_write_pending = Gauge(
            "ibrnet_cache_write_pending", "Rows waiting for the background cache writer", registry=registry
        )
        self.memory_cache_rows = Gauge(
            "ibrnet_memory_cache_rows",
            "Predictions held in process memory (IBRNET_MEMORY_CACHE_ROWS)",
            registry=registry,
        )
        self.models_loaded = Gauge("ibrnet_models_loaded", "Models serving", registry=registry)
        self.models_failed = Gauge(
            "ibrnet_models_failed", "Model folders skipped at start-up", registry=registry
        )

    def watch_pending_writes(self, pending: Callable[[], float]) -> None:
        self.cache_write_pending.set_function(pending)

    def watch_remembered_rows(self, remembered: Callable[[], float]) -> None:
        self.memory_cache_rows.set_function(remembered)

    def watch_collector(self, pauses: PauseLog) -> None:
        """Export Python's garbage collections (app/collector.py) from ``pauses``, read at scrape
        time: the collector's callback itself must not take a metric's lock."""
        self.registry.register(_CollectorMetrics(pauses))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CollectorMetrics(Collector):
    def __init__(self, pauses: PauseLog) -> None:
        self.pauses = pauses

    def collect(self) -> Iterable[Metric]:
        collections = CounterMetricFamily(
            "ibrnet_gc_collections", "Collections by Python's cyclic garbage collector", labels=["generation"]
        )
        seconds = CounterMetricFamily(
            "ibrnet_gc_pause_seconds",
            "Time spent in those collections (every request waits while one runs)",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "ibrnet_gc_longest_pause_seconds", "The longest of those collections", labels=["generation"]
        )
        for generation, (count, total, most) in enumerate(self.pauses.snapshot()):
            collections.add_metric([str(generation)], count)
            seconds.add_metric([str(generation)], total)
            longest.add_metric([str(generation)], most)
        return [collections, seconds, longest]
