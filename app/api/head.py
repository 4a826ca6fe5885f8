"""HEAD is GET without the body, for every GET route (RFC 9110 9.3.2).

FastAPI routes only the methods a route names, so `curl -I /models` got 405, and `HEAD /screen`
a 405 saying "allow: POST" although GET /screen works. Probes, proxies and download managers ask
with HEAD for the status and headers (Content-Type, Content-Length) a GET would get.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the body is computed as for GET, and dropped
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
