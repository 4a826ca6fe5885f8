"""GET /models: every served model's manifest, with its version and execution provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import RegistryDep
from app.api.formats import json_response
from app.inference.registry import LoadedModel
from app.schemas import ModelsPublic

router = APIRouter(tags=["models"])


def describe(model: LoadedModel) -> dict[str, Any]:
    return {
        **model.manifest.model_dump(mode="json"),
        "version": model.version,
        "provider": model.provider,
        "variant": model.variant,
    }


@router.get("/models", response_model=ModelsPublic)
async def list_models(registry: RegistryDep) -> Response:
    return json_response(
        {"models": [describe(model) for model in registry.models], "skipped": registry.failures}
    )
