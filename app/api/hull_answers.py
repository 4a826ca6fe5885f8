"""GET /screen/{id}/hull answers, built once per job and one at a time.

A succeeded job never changes, so its predicted hull is the same on every call: one build of a
big screen's hull (37,855 candidates below the known hull of H-O at max_atoms 1000) is 9 s of a
core, and four clients asking at once each waited 71-81 s while /predict shared the CPU with them.
Now a job's answer is built once and kept (least recently used first out, within a byte budget),
and builds run one at a time: a client asking for a hull already being built waits for it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

# Answers kept, all jobs together (a hull of tens of thousands of candidates is a few MB of JSON).
MAX_KEPT_BYTES = 64 * 1024 * 1024


class HullAnswers:
    def __init__(self, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._kept_bytes = 0
        self._building = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    async def get(self, key: str, build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The answer for ``key`` (a job id), built by ``build`` if new."""
        found = self._recall(key)
        if found is not None:
            return found
        async with self._building:
            found = self._recall(key)  # built while this one waited
            if found is not None:
                return found
            body = await build()
            self._keep(key, body)
            return body

    def _recall(self, key: str) -> bytes | None:
        body = self._kept.get(key)
        if body is not None:
            self._kept.move_to_end(key)
        return body

    def _keep(self, key: str, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        self._kept[key] = body
        self._kept_bytes += len(body)
        while self._kept_bytes > self.max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped)
