"""A bad Range header on a file (the page's assets, plotly.js, the API docs' assets) gets the
service's JSON error, not Starlette's plain text.

Starlette's FileResponse answers a malformed Range itself (400, "Malformed range header.") and an
unsatisfiable one too (416, empty body), so no exception handler ever sees them. This middleware
rewrites exactly those answers, and only when the request carried a Range header: every other
request passes through untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, record_failure

_REWRITTEN = {400: "invalid_range", 416: "range_not_satisfiable"}


class RangeErrorsAsJson:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == b"range" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # a plain-text 400/416 start, kept until its body is read
        body = b""

        async def json_errors(message: Message) -> None:
            nonlocal held, body
            if message["type"] == "http.response.start" and _is_plain_range_error(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            await _json_answer(held, body.decode("utf-8", "replace"), scope, receive, send)

        await self.app(scope, receive, json_errors)


def _is_plain_range_error(start: Message) -> bool:
    if start["status"] not in _REWRITTEN:
        return False
    content_type = dict(start.get("headers", [])).get(b"content-type", b"")
    return content_type.startswith(b"text/plain")


async def _json_answer(start: Message, text: str, scope: Scope, receive: Receive, send: Send) -> None:
    status = start["status"]
    code = _REWRITTEN[status]
    headers = dict(start.get("headers", []))
    content_range = headers.get(b"content-range", b"").decode("latin-1")
    if status == 416:
        size = content_range.rpartition("/")[2]
        message = f"the Range header asks only for bytes past the end of the file ({size} bytes)"
        extra = {"content_range": content_range} if content_range else {}
    else:
        message = f"the Range header cannot be read ({text.strip() or 'malformed'}); send bytes=START-END"
        extra = {}
    record_failure(scope, code)
    response = error_response(
        status, {"code": code, "message": message, "header": "range", **extra},
        headers={"content-range": content_range} if content_range else None,
    )  # fmt: skip
    await response(scope, receive, send)
