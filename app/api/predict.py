"""POST /predict and POST /predict/batch (JSON, or CSV / NDJSON streamed by Accept).

These two routes are the hot path, so they read and validate the body themselves: pydantic-core
parses and checks the JSON bytes in one step (``model_validate_json``), and FastAPI's generic
parameter and dependency resolution is skipped. The request schemas are still published in
OpenAPI (``openapi_extra``), and validation errors still go through app.api.errors.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse

from app.api.blocking import off_the_loop_if_large
from app.api.formats import (
    JSON_ONLY,
    MEDIA_TYPES,
    json_response,
    negotiate,
    preferred,
    stream_csv,
    stream_ndjson,
)
from app.api.unique_keys import refuse_duplicate_keys
from app.errors import UnsupportedMediaTypeError
from app.inference.predictor import Predictor, Result
from app.schemas import (
    ERROR_RESPONSES,
    MAX_ITEMS,
    BatchPredictionPublic,
    BatchPredictRequest,
    PredictionPublic,
    PredictRequest,
    inline_schema,
)
from app.settings import Settings

# Content types that say the body is something else than JSON. A body without one, or with curl's
# default (application/x-www-form-urlencoded) or text/plain, is read as JSON as before.
NOT_JSON = frozenset({
    "text/csv", "application/x-ndjson", "multipart/form-data", "application/octet-stream",
    "application/vnd.apache.parquet", "application/xml", "text/xml", "application/gzip",
})  # fmt: skip

# nginx's code for "the client closed the connection before the answer": logged, never received.
CLIENT_CLOSED_REQUEST = 499

router = APIRouter(tags=["predict"])

_Body = TypeVar("_Body", bound=BaseModel)

_BATCH_CONTENT = {
    "text/csv": {"schema": {"type": "string"}, "example": "formula,composition,band_gap,...\n"},
    "application/x-ndjson": {"schema": {"type": "string"}, "example": '{"formula": "Fe2O3", ...}\n'},
}


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = inline_schema(model)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_body(request: Request, model: type[_Body], context: dict[str, Any] | None = None) -> _Body:
    """The JSON body validated against ``model`` (with a validation ``context``, e.g. MAX_ITEMS);
    errors raised the way FastAPI raises them."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            "unsupported_media_type",
            f"content-encoding {encoding!r} is not supported; send the JSON body uncompressed",
            header="content-encoding",
        )
    raw = await request.body()
    if not raw.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        return await off_the_loop_if_large(len(raw), _validated_json, model, raw, context)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type in NOT_JSON and any(p.get("type") == "json_invalid" for p in problems):
            # Not a JSON mistake: the client sent another format (a CSV file to /predict/batch).
            raise UnsupportedMediaTypeError(
                "unsupported_media_type",
                f"the body is {media_type}, not JSON; send a JSON object with content-type "
                "application/json (a CSV or Parquet file of formulas goes to POST /screen)",
                header="content-type",
                got=media_type,
            ) from None
        raise RequestValidationError([{**p, "loc": ("body", *p["loc"])} for p in problems]) from None


def _validated_json(model: type[_Body], raw: bytes, context: dict[str, Any] | None) -> _Body:
    refuse_duplicate_keys(raw)  # pydantic keeps the last of two equal keys without a word
    return model.model_validate_json(raw, context=context)


@router.post(
    "/predict",
    response_model=PredictionPublic,
    responses=ERROR_RESPONSES,
    openapi_extra=_request_body(PredictRequest),
)
async def predict(request: Request) -> Response:
    """Predict every requested property of one formula (JSON only: an Accept without it is a 406)."""
    preferred(request.headers.get("accept"), JSON_ONLY, "json")
    body = await read_body(request, PredictRequest)
    predictor: Predictor = request.app.state.predictor
    return json_response(await predictor.predict_one(body.formula, body.properties))


@router.post(
    "/predict/batch",
    response_model=BatchPredictionPublic,
    responses={200: {"content": _BATCH_CONTENT}, **ERROR_RESPONSES},
    openapi_extra=_request_body(BatchPredictRequest),
)
async def predict_batch(request: Request) -> Response:
    """Predict many formulas; results in input order, a bad formula becomes an item with an error.

    `Accept: text/csv` or `application/x-ndjson` streams the rows as they are computed.
    """
    settings: Settings = request.app.state.settings
    # too_many_items is refused while the list is validated, before its items are looked at.
    body = await read_body(request, BatchPredictRequest, {MAX_ITEMS: settings.max_batch_items})
    predictor: Predictor = request.app.state.predictor
    plan = predictor.plan(body.properties)  # unknown properties fail here, before any output
    chunks = predictor.predict_chunks(body.formulas, plan)
    response_format = negotiate(request.headers.get("accept"))
    if response_format == "csv":
        return StreamingResponse(stream_csv(chunks, plan.outputs), media_type=MEDIA_TYPES["csv"])
    if response_format == "ndjson":
        return StreamingResponse(stream_ndjson(chunks), media_type=MEDIA_TYPES["ndjson"])
    results: list[Result] = []
    async for chunk in chunks:
        results.extend(chunk)
        # Nobody to answer: stop at this chunk rather than compute the rest of a batch a client
        # sent and walked away from (the streamed formats stop when their stream is cancelled).
        if await request.is_disconnected():
            await chunks.aclose()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
    return json_response({"results": results})
