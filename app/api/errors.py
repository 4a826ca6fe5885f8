"""The one place where failures become HTTP answers: ``{"error": {"code", "message", ...}}``.

Domain errors are raised deep (parser, registry, limits) and carry their code and status;
FastAPI's validation errors, Starlette's 404/405 and anything unexpected are translated here
so that every error body has the same shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Scope

from app.errors import DomainError

logger = logging.getLogger(__name__)

# A batch of 100,000 wrong-typed items must not produce a 100,000-entry error body.
MAX_LISTED_ERRORS = 10

# What an error body echoes of the request is bounded: a 30 MB JSON key came back three times
# (90 MB), a CSV header of 400,000 names as a 3.6 MB list. Longer texts and lists are cut.
MAX_ECHOED_CHARS = 1_000
MAX_ECHOED_ITEMS = 100
MAX_FIELD_PART_CHARS = 100  # of one key in a field path ("filters.<key>.max")

# What FastAPI raises (HTTP 400) when it cannot even decode the body.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status_code: int, error: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    error = _bounded(error)
    try:
        body = orjson.dumps({"error": error})
    except TypeError:
        # A detail orjson cannot write (an integer beyond 64 bits: the size of an enormous
        # enumeration) must not turn a refusal into a 500; the standard library writes any int.
        body = json.dumps({"error": error}, default=str, ensure_ascii=False).encode()
    return Response(
        body,
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _bounded(value: Any) -> Any:
    """``value`` with every text cut to MAX_ECHOED_CHARS and every list to MAX_ECHOED_ITEMS (the
    cut says how much was left out)."""
    if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
        return f"{value[:MAX_ECHOED_CHARS]}… ({len(value):,} characters)"
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        kept = [_bounded(item) for item in value[:MAX_ECHOED_ITEMS]]
        if len(value) > MAX_ECHOED_ITEMS:
            kept.append(f"… {len(value) - MAX_ECHOED_ITEMS:,} more")
        return kept
    return value


def route_label(scope: Scope) -> str:
    """The route template (/screen/{job_id}), never the raw path: bounded metric cardinality."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def record_failure(scope: Scope, code: str) -> None:
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.http_failures.labels(route=route_label(scope), code=code).inc()


def field_name(location: Sequence[str | int]) -> str:
    """("body", "formulas", 3) -> "formulas[3]"; the body itself -> "body"."""
    parts = list(
        location[1:] if location and location[0] in ("body", "query", "path", "header") else location
    )
    if not parts:
        return str(location[0]) if location else "body"
    name = _clipped(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{_clipped(part)}"
    return name


def _clipped(part: str | int) -> str:
    text = str(part)
    return text if len(text) <= MAX_FIELD_PART_CHARS else text[:MAX_FIELD_PART_CHARS] + "…"


async def _domain_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, DomainError)
    record_failure(request.scope, error.code)
    # A refusal that passes with time (a quota, a rate) says when to try again.
    retry = error.details.get("retry_after_s")
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return error_response(error.status_code, error.to_dict(), headers=headers)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        problem = next(p for p in problems if p.get("type") == "json_invalid")
        detail = (problem.get("ctx") or {}).get("error", "")
        record_failure(request.scope, "invalid_json")
        return error_response(
            400,
            {"code": "invalid_json", "message": f"the request body is not valid JSON: {detail}".rstrip(": ")},
        )
    listed = [
        {
            "field": field_name(problem.get("loc", ())),
            "message": problem.get("msg", ""),
            "type": problem.get("type"),
        }
        for problem in problems[:MAX_LISTED_ERRORS]
    ]
    first = listed[0] if listed else {"field": "body", "message": "invalid request"}
    first_type = problems[0].get("type") if problems else None
    if first["field"] == "body" and first_type == "missing":
        message = "the request body is missing (send a JSON object)"
    elif first["field"] == "body" and first_type in ("model_attributes_type", "dict_type", "model_type"):
        message = "the request body must be a JSON object"
    else:
        message = f"{first['field']}: {first['message']}"
    record_failure(request.scope, "invalid_request")
    return error_response(
        422,
        {
            "code": "invalid_request",
            "message": message,
            "field": first["field"],
            "errors": listed,
            "error_count": len(problems),
        },
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    if error.status_code == 404 and error.detail in (None, "Not Found"):
        message = f"no such resource: {request.method} {request.url.path}"
    elif error.status_code == 400 and error.detail == FASTAPI_BODY_PARSE_ERROR:
        # FastAPI's answer to a body it cannot decode (not UTF-8, for one): a JSON problem too.
        code, message = "invalid_json", "the request body could not be read as UTF-8 JSON"
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(error.detail)
    record_failure(request.scope, code)
    return error_response(error.status_code, {"code": code, "message": message}, headers=error.headers)


# nginx's status for "the client closed the request": never seen by the client, kept apart in the
# metrics and logs from the service's own failures (500).
CLIENT_CLOSED_REQUEST = 499


def client_disconnected(scope: Scope) -> Response:
    """The answer to a client that left mid-body: counted and logged as its own event, not a 500."""
    logger.info("client disconnected during the request body: %s %s", scope.get("method"), scope.get("path"))
    record_failure(scope, "client_disconnected")
    return error_response(
        CLIENT_CLOSED_REQUEST,
        {
            "code": "client_disconnected",
            "message": "the client closed the connection before sending the whole body",
        },
    )


async def _client_disconnect(request: Request, error: Exception) -> Response:
    return client_disconnected(request.scope)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    # A bug, not an input problem: log it with the traceback, answer without internals.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    record_failure(request.scope, "internal_error")
    return error_response(500, {"code": "internal_error", "message": "internal error; see the service log"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected_error)
