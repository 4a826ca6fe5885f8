"""A memo bounded by the bytes it keeps, not by its number of entries.

An entry-count bound is no bound when the keys are client text: 65,536 refused 1 MB formulas are
64 GB. Here every entry is charged the length of its text plus a fixed overhead for the objects
around it, the least recently used entries go first, and a key too large for the budget is
computed every time instead of kept. Exceptions are not memoized.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

# Roughly what one entry's key tuple, result object and dict slot cost besides the text itself.
ENTRY_OVERHEAD_BYTES = 512


class BytesBoundedMemo(Generic[V]):
    def __init__(self, function: Callable[..., V], max_bytes: int, text_of: Callable[..., str]) -> None:
        """Memoize ``function``; ``text_of(*args)`` is the client text an entry is charged for."""
        self._function = function
        self._text_of = text_of
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, *args: Hashable) -> V:
        with self._lock:
            found = self._entries.get(args)
            if found is not None:
                self._entries.move_to_end(args)
                return found[0]
        value = self._function(*args)
        cost = len(self._text_of(*args)) + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes:
            return value
        with self._lock:
            if args not in self._entries:
                self._entries[args] = (value, cost)
                self.bytes += cost
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
