"""One pure-ASGI middleware: request body size limit and per-request metrics.

Pure ASGI rather than BaseHTTPMiddleware: it adds microseconds, not a task per request, and it
sees streamed responses to their end. The body limit is checked from Content-Length before the
body is read; a chunked body without a length is counted as it arrives.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import client_disconnected, error_response, record_failure, route_label
from app.inference.metrics import ServiceMetrics


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what an exception escaping the app becomes

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await self._too_large(scope, send_and_watch)
                return
            if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_bounded(receive)
                if body is None:
                    await self._too_large(scope, send_and_watch)
                    return
                if body is _DISCONNECTED:  # the client left mid-body: nothing to answer
                    await client_disconnected(scope)(scope, _no_body, send_and_watch)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_and_watch)
        finally:
            route = route_label(scope)
            self.metrics.http_requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.http_request_seconds.labels(route=route).observe(time.perf_counter() - started)

    async def _read_bounded(self, receive: Receive) -> bytes | None:
        """The whole body, None as soon as it passes the limit, or _DISCONNECTED if the client left."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client disconnected: a partial body is no body
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        record_failure(scope, "payload_too_large")
        response = error_response(
            413,
            {
                "code": "payload_too_large",
                "message": f"the request body is larger than the limit of {self.max_body_bytes} bytes",
                "limit": self.max_body_bytes,
            },
            # The client may still be sending: tell it not to reuse this connection.
            headers={"Connection": "close"},
        )
        await response(scope, _no_body, send)


# What _read_bounded returns for a client that disconnected before its body ended.
_DISCONNECTED = b"\x00disconnected"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the real channel (streaming responses watch it for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
