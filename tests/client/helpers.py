"""Shared checks for the client tests."""

from __future__ import annotations

import math

import httpx
import pandas as pd

from tests.api.harness import metric_value

# In-process and served answers come from the same ONNX files, but ONNX Runtime may sum in another
# order for another batch shape: equal to float32 precision, not always to the last bit.
RTOL = 1e-6
ATOL = 1e-7


def assert_same_frame(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same columns in the same order, same rows, values equal to float32 precision."""
    assert list(actual.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True),
        expected.reset_index(drop=True),
        check_exact=False,
        rtol=RTOL,
        atol=ATOL,
    )


def same_number(frame_value: float, answer: float | None) -> bool:
    """A DataFrame cell against the JSON answer it came from: null is NaN, a number is that number."""
    if answer is None:
        return math.isnan(frame_value)
    return frame_value == answer


def batch_requests(base: str, status: str = "200", route: str = "/predict/batch") -> float:
    """POST requests to ``route`` the service has answered with ``status`` (its own /metrics). A body
    refused for its size never reaches a route: those are counted under route "unmatched"."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return metric_value(text, "ibrnet_http_requests_total", route=route, method="POST", status=status)
