"""API keys: who a request is, whether it may pass, and how fast (off unless keys are configured).

One pure-ASGI middleware, in front of everything: with keys on, a request to anything but the
public paths (liveness, readiness, metrics, the page and its assets, the API docs) needs
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, else 401 ``missing_api_key`` /
``invalid_api_key``. Keys are compared by their sha256 (the keys file holds only digests), and a
request's identity, ``scope["state"]["client"]``, is a short prefix of that digest: what jobs are
owned by. Each identity gets a token bucket of ``IBRNET_API_RATE_PER_S`` (burst twice that) in
this process; past it, 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response, record_failure
from app.settings import Settings

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/vendor/", "/docs/")
CLIENT_ID_CHARS = 16  # of the key's sha256: enough to tell keys apart, useless to log in with


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def configured_digests(settings: Settings) -> frozenset[str]:
    """The sha256 digests of every configured key (empty: access control is off)."""
    digests = {key_digest(key.strip()) for key in settings.api_keys.split(",") if key.strip()}
    if settings.api_keys_file is not None:
        for number, line in enumerate(Path(settings.api_keys_file).read_text().splitlines(), start=1):
            entry = line.split("#", 1)[0].strip().lower()
            if not entry:
                continue
            if len(entry) != 64 or any(c not in "0123456789abcdef" for c in entry):
                raise ValueError(f"IBRNET_API_KEYS_FILE line {number}: not a sha256 hex digest")
            digests.add(entry)
    return frozenset(digests)


class RateLimiter:
    """A token bucket per client: ``rate`` a second, bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = 2.0 * rate
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0 when the request may go now (a token is taken), else the seconds until one is free."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, digests: frozenset[str], rate_per_s: float) -> None:
        self.app = app
        self.digests = digests
        self.limiter = RateLimiter(rate_per_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.digests or _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = _presented_key(scope)
        if key is None:
            await _refuse(scope, send, 401, "missing_api_key", "this service needs an API key: "
                          "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")  # fmt: skip
            return
        digest = key_digest(key)
        if digest not in self.digests:
            await _refuse(scope, send, 401, "invalid_api_key", "the API key is not valid here")
            return
        client = digest[:CLIENT_ID_CHARS]
        wait = self.limiter.wait_s(client)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            message = f"more than {self.limiter.rate:g} requests a second for this key; retry in {retry} s"
            await _refuse(scope, send, 429, "rate_limited", message, headers={"Retry-After": str(retry)})
            return
        scope.setdefault("state", {})["client"] = client
        await self.app(scope, receive, send)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


async def _refuse(
    scope: Scope, send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    record_failure(scope, code)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="ibrnet"'}
    response = error_response(status, {"code": code, "message": message}, headers=headers)
    await response(scope, _nothing, send)


async def _nothing() -> dict[str, object]:
    return {"type": "http.disconnect"}


def client_of(scope: Scope) -> str | None:
    """The request's identity (None with keys off: everyone is the same client)."""
    return scope.get("state", {}).get("client")


def queue_identity(scope: Scope) -> str:
    """Whose turn a screen takes in the queue: the key's identity, or with keys off the peer
    address's (hashed; as the server sees it, so behind a proxy that does not forward addresses
    every client is one, and turns go round the jobs as before). It decides turns only: with keys
    off, every client still sees and stops every job."""
    client = client_of(scope)
    if client is not None:
        return client
    peer = scope.get("client")
    host = str(peer[0]) if peer else "unknown"
    return "peer-" + hashlib.sha256(host.encode()).hexdigest()[:CLIENT_ID_CHARS]
