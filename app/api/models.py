"""GET /models: every served model's manifest, with its version and execution provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import PredictorDep, RegistryDep
from app.api.formats import json_response
from app.inference.registry import LoadedModel
from app.schemas import ModelsPublic
from app.stability.assess import DERIVED_COLUMNS, E_ABOVE_HULL, SOURCE_PROPERTY, UNIT

router = APIRouter(tags=["models"])


def describe(model: LoadedModel) -> dict[str, Any]:
    return {
        **model.manifest.model_dump(mode="json"),
        "version": model.version,
        "provider": model.provider,
        "variant": model.variant,
    }


@router.get("/models", response_model=ModelsPublic)
async def list_models(registry: RegistryDep, predictor: PredictorDep) -> Response:
    """Served models (manifests), and the properties derived from them (e_above_hull)."""
    derived = []
    if E_ABOVE_HULL in predictor.served_properties():
        assert predictor.stability is not None
        reference = predictor.stability.reference
        derived.append(
            {
                "property": E_ABOVE_HULL,
                "unit": UNIT,
                "derived_from": SOURCE_PROPERTY,
                "fields": ["p_stable", "decomposition", "known", "reference_value", "reference"],
                "screen_columns": list(DERIVED_COLUMNS),
                "reference": {**reference.describe(), "compounds": len(reference.keys), **reference.metadata},
            }
        )
    return json_response(
        {
            "models": [describe(model) for model in registry.models],
            "derived": derived,
            "skipped": registry.failures,
        }
    )
