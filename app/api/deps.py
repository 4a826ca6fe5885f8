"""Named dependencies for the routers. ``async def`` on purpose: FastAPI runs plain ``def``
dependencies in a thread pool, which would cost a thread hop on every request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.inference.metrics import ServiceMetrics
from app.inference.predictor import Predictor
from app.inference.registry import ModelRegistry
from app.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def _metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(_metrics)]
