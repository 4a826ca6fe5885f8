"""The one exception type of the client: a request the service refused or could not answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol


class _Response(Protocol):
    """What ``error_from_response`` reads of an ``httpx.Response`` (no httpx import needed here)."""

    status_code: int
    text: str


class ServiceError(Exception):
    """A whole request the service refused (422 unknown_property, 401, 413 ...), a service that
    stayed unreachable past the retry budget, or a screening job that failed or was cancelled.

    ``status`` is the HTTP status, or None when no HTTP answer is behind the error (connection
    failures, job outcomes). ``code`` is the service's snake_case code (``unknown_property``) or
    one of the client's own: ``connection_failed``, ``job_failed``, ``job_cancelled``,
    ``unexpected_response`` (an answer not shaped as the API says), ``cancelled`` (a retry abandoned
    because its call was). ``details`` holds the rest of the error body (e.g. ``limit``).

    A bad formula is never a ServiceError: it is a row with ``error_code`` / ``error_message``.
    """

    def __init__(
        self, status: int | None, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        prefix = f"HTTP {self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ServiceError(status={self.status!r}, code={self.code!r}, message={self.message!r})"


def error_from_response(response: _Response) -> ServiceError:
    """The service's ``{"error": {"code", "message", ...}}`` body as a ServiceError; anything else
    (a proxy's HTML page, an empty body) keeps its status and the start of its text."""
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = {key: value for key, value in error.items() if key not in ("code", "message")}
        return ServiceError(response.status_code, error["code"], str(error.get("message", "")), details)
    text = response.text.strip()[:300] or "(empty body)"
    return ServiceError(response.status_code, f"http_{response.status_code}", text)
