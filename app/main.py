"""The FastAPI application: ``create_app()`` builds it, the lifespan wires its services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api import health, limits, models, predict, screen
from app.api.access import AccessMiddleware, configured_digests
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.head import HeadAsGet
from app.api.middleware import ServiceMiddleware
from app.api.range_errors import RangeErrorsAsJson
from app.collector import serving_collector
from app.inference.metrics import ServiceMetrics
from app.inference.service import Services
from app.settings import Settings, get_settings
from app.web import install_page


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="iBRNet property prediction",
        description="Materials properties from chemical formulas; iBRNet models on ONNX Runtime.",
        version="0.1.0",
        lifespan=_lifespan,
        docs_url=None,  # served offline by app.api.docs
        redoc_url=None,
        # FastAPI's native OpenTelemetry looks up the global providers on every request (about 5%
        # of a /health request here); the service exports Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    install_error_handlers(app)
    app.add_middleware(RangeErrorsAsJson)  # innermost: sees FileResponse's own answers
    app.add_middleware(HeadAsGet)  # innermost: the other middlewares see the request as sent
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes, metrics=app.state.metrics)
    # Added last, so it runs first: a refused key costs no body read (its answer is still counted,
    # since the metrics middleware records failures through the app's state).
    app.add_middleware(
        AccessMiddleware, digests=configured_digests(settings), rate_per_s=settings.api_rate_per_s
    )
    for router in (predict.router, models.router, health.router, limits.router, screen.router):
        app.include_router(router)
    install_docs(app)
    install_page(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = await Services.start(app.state.settings, app.state.metrics)
    app.state.registry = services.registry
    app.state.store = services.store
    app.state.writer = services.writer
    app.state.predictor = services.predictor
    try:
        with serving_collector(app.state.settings.gc_thresholds) as pauses:
            app.state.metrics.watch_collector(pauses)
            async with screen.lifespan(app):  # the screening job runner: app.state.screening
                yield
    finally:
        await services.stop()
