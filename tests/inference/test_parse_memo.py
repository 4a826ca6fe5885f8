"""The parse memos keep a bounded number of bytes, whatever clients send (issue 17, defect 1)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from app.inference.predictor import Predictor
from app.memo import ENTRY_OVERHEAD_BYTES, BytesBoundedMemo
from tests.model_factory import load_registry


def test_refused_megabyte_formulas_are_not_kept(models_dir):
    predictor = Predictor(load_registry(models_dir))
    allowed = frozenset({"Fe", "O"})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(40):  # 40 distinct 1 MB formulas, each refused as too long
            answer = predictor.parse("Fe" * 500_000 + str(index), allowed)
            assert answer.code == "formula_too_long"
        del answer
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 4 * 1024 * 1024, f"{kept / 1e6:.1f} MB kept after 40 MB of refused formulas"


def test_the_memo_evicts_the_least_recently_used_by_bytes():
    calls: list[str] = []

    def length(text: str) -> int:
        calls.append(text)
        return len(text)

    memo = BytesBoundedMemo(length, max_bytes=3 * (ENTRY_OVERHEAD_BYTES + 10), text_of=lambda text: text)
    for text in ("a" * 10, "b" * 10, "c" * 10):
        memo(text)
    memo("a" * 10)  # a is now the most recent
    memo("d" * 10)  # over budget: b, the least recently used, goes
    assert len(memo) == 3 and memo.bytes <= memo.max_bytes
    calls.clear()
    memo("a" * 10), memo("c" * 10), memo("d" * 10)
    assert calls == []
    memo("b" * 10)
    assert calls == ["b" * 10]


def test_a_key_larger_than_the_budget_is_computed_not_kept_and_errors_are_not_kept():
    memo = BytesBoundedMemo(len, max_bytes=ENTRY_OVERHEAD_BYTES + 100, text_of=lambda text: text)
    assert memo("x" * 1000) == 1000 and len(memo) == 0 and memo.bytes == 0

    def refuse(text: str) -> int:
        raise ValueError(text)

    failing = BytesBoundedMemo(refuse, max_bytes=10_000, text_of=lambda text: text)
    with pytest.raises(ValueError):
        failing("bad")
    assert len(failing) == 0
