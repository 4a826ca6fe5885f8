"""Reading a large request body off the event loop.

Validating a 32 MiB body takes up to about a second of Python work (a million non-string items,
each made into a NotAString). On the event loop that second is a second of silence for every
other client, /health included; in a worker thread the interpreter still switches threads every
few milliseconds, so the loop keeps answering. A small body is read in place: a thread hop costs
more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# Bodies up to this size are read on the loop (a 1 MiB batch of formulas validates in ~5 ms).
LARGE_BODY_BYTES = 1024 * 1024


async def off_the_loop_if_large(size: int, work: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``work(*args, **kwargs)``, in a worker thread when ``size`` bytes make it a long call."""
    if size <= LARGE_BODY_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)
