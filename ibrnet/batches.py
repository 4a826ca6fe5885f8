"""What one POST /predict/batch carries: the exact JSON body, and chunks that fit the service's limits.

A chunk respects both ``max_batch_items`` and ``max_body_bytes`` from GET /limits. Its size is
computed from the very encoding ``request_body`` sends, so "fits" is exact, not estimated.
A formula too large to fit even alone is still sent alone: the service answers it with its own
refusal, which becomes that formula's error row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# GET /limits of a service that predates it (404): the service's own defaults.
DEFAULT_MAX_BATCH_ITEMS = 100_000
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_items: int
    max_body_bytes: int

    @classmethod
    def from_service(cls, limits: dict[str, Any] | None) -> BatchLimits:
        limits = limits or {}
        return cls(
            max_items=int(limits.get("max_batch_items", DEFAULT_MAX_BATCH_ITEMS)),
            max_body_bytes=int(limits.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        )


def _encode(value: Any) -> bytes:
    # Compact and UTF-8 (not \u escapes): the smallest body, and the size counted below is the
    # size sent.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def transportable(formula: str) -> str:
    """The formula as it can travel in UTF-8 JSON: a lone surrogate (from a mis-decoded file) would
    make the whole body unreadable, so it is replaced and only this formula is refused."""
    try:
        formula.encode("utf-8")
    except UnicodeEncodeError:
        return formula.encode("utf-8", "replace").decode("utf-8")
    return formula


def request_body(formulas: Sequence[str], properties: Sequence[str] | None) -> bytes:
    """The JSON body of POST /predict/batch, byte for byte."""
    body: dict[str, Any] = {"formulas": [transportable(text) for text in formulas]}
    if properties is not None:
        body["properties"] = list(properties)
    return _encode(body)


def plan_chunks(
    formulas: Sequence[str], properties: Sequence[str] | None, limits: BatchLimits
) -> list[range]:
    """Consecutive index ranges covering ``formulas``, each a request within ``limits``."""
    overhead = len(request_body([], properties))
    chunks: list[range] = []
    start, size = 0, overhead
    for index, text in enumerate(formulas):
        # The formula's own bytes plus the comma before it (one more than the first one needs).
        cost = len(_encode(transportable(text))) + 1
        count = index - start
        if count and (count >= limits.max_items or size + cost > limits.max_body_bytes):
            chunks.append(range(start, index))
            start, size = index, overhead
        size += cost
    if start < len(formulas):
        chunks.append(range(start, len(formulas)))
    return chunks
