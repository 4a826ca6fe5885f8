"""GET /limits: the request limits this deployment enforces, so clients size their requests to them.

The Python client (``ibrnet.Client``) and the page read these instead of hard-coding defaults:
a deployment that lowers IBRNET_MAX_BATCH_ITEMS or IBRNET_MAX_BODY_BYTES is followed at once.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import SettingsDep
from app.api.formats import json_response
from app.schemas import LimitsPublic
from app.screening.enumerate import MAX_ATOMS_LIMIT

router = APIRouter(tags=["health"])


@router.get("/limits", response_model=LimitsPublic)
async def limits(settings: SettingsDep) -> Response:
    """Largest batch, formula, body and screen this service accepts."""
    return json_response(
        {
            "max_batch_items": settings.max_batch_items,
            "max_formula_length": settings.max_formula_length,
            "max_body_bytes": settings.max_body_bytes,
            "screen_max_compositions": settings.screen_max_compositions,
            "screen_max_atoms": MAX_ATOMS_LIMIT,
        }
    )
