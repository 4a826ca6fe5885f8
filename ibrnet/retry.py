"""When and how long to retry: exponential back-off with jitter, Retry-After honoured.

Retried: 429 and 503 (the service asks the client to come back: over a quota, a model failing,
the database away), 502 and 504 (a proxy in front of a restarting service), and transport
failures (connection refused or reset, timeouts, a server dying mid-response). Predictions are
idempotent, so a batch that may or may not have been answered is simply sent again. A request
that is not idempotent (submitting a screening job) is retried only where the service cannot
have acted on it: the connection was never made, or the service answered 429/503.

The default budget (10 attempts, waits doubling from 0.5 s up to 10 s, each between half and all
of that) waits at least ~28 s in total before giving up: a service restart of 10-20 s is ridden
out, a service that is really down is reported within a minute.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from ibrnet.errors import ServiceError, error_from_response

# Statuses that say "not now" rather than "never"; the first two come from the service itself.
REFUSED_FOR_NOW = frozenset({429, 503})
GATEWAY_STATUSES = frozenset({502, 504})
# Failures before the request reached the service: safe to repeat even a non-idempotent request.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Transport errors that are the caller's mistake, not the network's: retrying cannot help.
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a request is tried and how long to wait in between.

    ``attempts`` counts every try (1: never retry). The n-th retry waits a random time between half
    and all of ``min(max_delay, base_delay * 2 ** (n - 1))`` ("equal jitter": the waits still
    grow, but clients that failed together do not come back together). A Retry-After header is
    obeyed instead; one longer than ``max_retry_after`` (a quota reset an hour away) is not waited
    for: the request fails at once with the service's 429/503 as a ServiceError.
    """

    attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts counts the first try too: it must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before the ``retry``-th retry (1-based) when the service gave no hint."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(retry - 1, 62))
        return ceiling * (0.5 + 0.5 * random.random())

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is None:
            return self.backoff(retry)
        # A little jitter on top, so many threads told the same instant do not all return at it.
        return retry_after * (1.0 + 0.1 * random.random())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def send_with_retries(
    send: Callable[[], httpx.Response],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    accept: Container[int] = (),
    stop: threading.Event | None = None,
) -> httpx.Response:
    """``send()`` until it answers below 400 (or with a status in ``accept``), retrying per ``policy``.

    Raises ServiceError: the service's own error for a status not worth retrying (or the last one
    once the budget is spent), ``connection_failed`` when the service could not be reached.
    ``stop``, when set by the caller (the user interrupted a long predict), ends the waiting early.
    """
    retryable_statuses = REFUSED_FOR_NOW | GATEWAY_STATUSES if idempotent else REFUSED_FOR_NOW
    retryable_errors: tuple[type[httpx.TransportError], ...] = (
        (httpx.TransportError,) if idempotent else _NOT_SENT
    )
    attempt = 0
    while True:
        attempt += 1
        last_try = attempt >= policy.attempts
        try:
            response = send()
        except _NOT_TRANSIENT:
            raise
        except retryable_errors as error:
            if last_try:
                raise _unreachable(error, attempt) from error
            wait = policy.delay(attempt, None)
        except httpx.TransportError as error:  # sent, maybe acted on, not idempotent: do not repeat
            raise _unreachable(error, attempt) from error
        else:
            status = response.status_code
            if status < 400 or status in accept:
                return response
            if status not in retryable_statuses or last_try:
                raise error_from_response(response)
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after > policy.max_retry_after:
                error = error_from_response(response)
                error.details.setdefault("retry_after", retry_after)
                raise error
            wait = policy.delay(attempt, retry_after)
        if stop is not None:
            if stop.wait(wait):
                raise ServiceError(None, "cancelled", "the call was abandoned while waiting to retry")
        else:
            time.sleep(wait)


def _unreachable(error: httpx.TransportError, attempts: int) -> ServiceError:
    try:
        target = f"{error.request.method} {error.request.url}"
    except RuntimeError:  # an error raised before a request was attached
        target = "the service"
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return ServiceError(
        None,
        "connection_failed",
        f"{target} failed after {tries}: {type(error).__name__}: {error}".rstrip(": "),
        {"attempts": attempts, "exception": type(error).__name__},
    )
