"""Domain errors: raised deep in the code, turned into HTTP answers in one place (app/api/errors.py).

Every rejection carries a machine-readable snake_case ``code``, a ``message`` that names the
offending input, and optional structured details (the token, the element, the limit).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """An input or request the service refuses; never a bug."""

    status_code: int = 422

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class NotFoundError(DomainError):
    status_code = 404


class PayloadTooLargeError(DomainError):
    status_code = 413


class UnsupportedMediaTypeError(DomainError):
    status_code = 415


class NotAcceptableError(DomainError):
    status_code = 406
