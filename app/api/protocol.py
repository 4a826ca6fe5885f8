"""uvicorn's httptools protocol with the limits a public service needs (``ibrnet serve`` uses it).

uvicorn alone lets a client hold a connection forever before its first request line, send
headers of any size, trickle a body one byte a minute, or open connections until the process runs
out of file descriptors; and it answers malformed HTTP with a text/plain 400. Here, per
connection:
- headers must be complete within ``IBRNET_HEADER_TIMEOUT_S`` of the connection (or of the end
  of the previous response on a kept-alive one) and within ``IBRNET_MAX_HEADER_BYTES``;
- a body may pause at most ``IBRNET_BODY_TIMEOUT_S`` between two pieces (which also bounds how
  long a trickling client can hold up a graceful shutdown);
- past its first ``IBRNET_MIN_BODY_RATE_GRACE_S``, a body must arrive at ``IBRNET_MIN_BODY_RATE``
  bytes/s on average (a byte every few seconds never pauses long enough for the rule above, and
  a few such connections per allowed slot locked every other client out);
- past ``IBRNET_MAX_CONNECTIONS`` open connections a new one is answered 503 and closed at once;
and every refusal is the service's JSON error body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import get_settings

logger = logging.getLogger(__name__)

TIMER_SLACK_S = 0.005  # the event loop's timers may fire this much early
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}  # fmt: skip


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.min_body_rate = settings.min_body_rate
        self.min_body_rate_grace_s = settings.min_body_rate_grace_s
        self._body_started = 0.0
        self._body_bytes = 0
        self._last_piece = 0.0
        self._rate_judged = True
        self.max_header_bytes = settings.max_header_bytes
        self.max_connections = settings.max_connections
        self._timer: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0
        self._tail = b""  # the last bytes read while in headers: their blank line may straddle reads

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "too_many_connections", "the service has too many open connections; retry")
            return
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            # Only the bytes up to the blank line that ends the headers count: a body that comes
            # in the same read is not header.
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = window[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(
                    431, "headers_too_large", f"the request headers exceed {self.max_header_bytes} bytes"
                )
                return
            if self._timer is None:  # a kept-alive connection starts its next request
                self._arm(self.header_timeout_s)
        super().data_received(data)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # Each request, a pipelined one included, is counted and timed from its own first byte.
        self._reading_headers = True
        self._header_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._tail = b""
        super().on_headers_complete()
        self._body_started, self._body_bytes = self.loop.time(), 0
        self._last_piece = self._body_started
        # Queued behind a running request, the body waits on uvicorn (it paused reading), not on
        # the client: its rate says nothing about the client, and only the pause rule applies.
        self._rate_judged = not self.pipeline
        if self.pipeline:
            self._disarm()
        else:  # until the body is complete (or at once, with none)
            self._arm(self._body_wait())

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._last_piece = self.loop.time()
        self._arm(self._body_wait())
        super().on_body(body)

    def _body_wait(self) -> float:
        """Seconds until the body breaks a rule if nothing more arrives: a pause of
        body_timeout_s, or its average rate falling under min_body_rate after the grace period."""
        due = min(self._last_piece + self.body_timeout_s, self._rate_due())
        return max(0.0, due - self.loop.time())

    def _rate_due(self) -> float:
        """When the body's average rate falls under min_body_rate if nothing more arrives."""
        if self.min_body_rate <= 0 or not self._rate_judged:
            return float("inf")
        return self._body_started + max(self.min_body_rate_grace_s, self._body_bytes / self.min_body_rate)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._reading_headers = True
        self._header_bytes = 0
        self._tail = b""
        super().on_response_complete()  # arms uvicorn's keep-alive timeout until the next bytes

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed_request", f"the request is not valid HTTP/1.1: {msg}")

    # -- helpers ------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._reading_headers:
            self._refuse(
                408, "header_timeout", f"the request headers took longer than {self.header_timeout_s:g} s"
            )
        elif self.cycle is not None and not self.cycle.response_started and not self.pipeline:
            now = self.loop.time()
            if now >= self._last_piece + self.body_timeout_s - TIMER_SLACK_S:
                logger.info("closing a connection whose request body stalled for %.0f s", self.body_timeout_s)
                self._refuse(
                    408, "body_timeout", f"the request body paused for longer than {self.body_timeout_s:g} s"
                )
            elif now >= self._rate_due() - TIMER_SLACK_S:
                logger.info(
                    "closing a connection whose request body trickled in (%d bytes)", self._body_bytes
                )
                self._refuse(
                    408,
                    "body_too_slow",
                    f"the request body arrived slower than {self.min_body_rate:g} bytes/s "
                    f"({self._body_bytes} bytes in {now - self._body_started:.0f} s)",
                )
            else:  # the timer ran early: wait for the rule it was set for
                self._arm(max(self._body_wait(), TIMER_SLACK_S))
        else:  # the answer is under way: the client is slow to read it, not to send
            return

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Our JSON error body, then close: nothing more is read from this connection."""
        self._disarm()
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(
            body
        )
        self.transport.write(head + body)
        self.transport.close()
        # Every request of this connection, running or queued, sees the client gone.
        for cycle in [self.cycle, *(queued for queued, _ in self.pipeline)]:
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
