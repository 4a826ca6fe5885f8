"""Reading a large request body off the event loop.

Validating a large body can take seconds of Python work (a million non-string items, each made
into a NotAString). On the event loop those are seconds of silence for every
other client, /health included; in a worker thread the interpreter still switches threads every
few milliseconds, so the loop keeps answering. A small body is read in place: a thread hop costs
more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# Bodies up to this size are read on the loop: 16 KiB of formulas validates in well under a
# millisecond, and 16 KiB of the worst items (`[1, 2]` each, a NotAString each) in about 20 ms.
LARGE_BODY_BYTES = 16 * 1024


async def off_the_loop_if_large(size: int, work: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``work(*args, **kwargs)``, in a worker thread when ``size`` bytes make it a long call."""
    if size <= LARGE_BODY_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)
