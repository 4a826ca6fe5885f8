"""GET /health (alive), GET /ready (models loaded and database answering), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import MetricsDep, PredictorDep, RegistryDep
from app.api.formats import json_response
from app.inference.metrics import METRICS_CONTENT_TYPE
from app.schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["health"])

_ALIVE = b'{"status":"ok"}'


# HEAD too (load balancers and uptime probes check liveness with it): app/api/head.py.
@router.get("/health", response_model=HealthPublic)
async def health() -> Response:
    """Liveness: the process answers. Says nothing about models or the database (see /ready)."""
    return Response(_ALIVE, media_type="application/json")


@router.get("/ready", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
async def ready(registry: RegistryDep, predictor: PredictorDep) -> Response:
    """200 when models are loaded and the database answers; 503 with the reasons otherwise.

    `degraded` (503): predictions are served, but without the cache.
    """
    reasons: list[str] = []
    if not registry.by_property:
        reasons.append("no model is loaded")
    reasons += [f"model {folder} skipped: {why}" for folder, why in registry.failures.items()]

    cache = predictor.cache
    database_ok = cache is not None and await cache.ping()
    if not database_ok:
        detail = cache.last_error if cache is not None else "no database configured"
        reasons.append(f"database unavailable ({detail}); predicting without the cache")

    if registry.by_property and database_ok:
        status = "ready"
    elif registry.by_property:
        status = "degraded"
    else:
        status = "unavailable"
    writer = cache.writer if cache is not None else None
    body = {
        "status": status,
        "reasons": reasons,
        "models": sorted(registry.by_property),
        "database": "ok" if database_ok else "unavailable",
        "pending_cache_writes": writer.pending if writer is not None else 0,
    }
    return json_response(body, status_code=200 if status == "ready" else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(service_metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(service_metrics.render(), media_type=METRICS_CONTENT_TYPE)
