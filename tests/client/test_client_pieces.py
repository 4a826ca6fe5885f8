"""The client's parts on their own: request sizing, back-off, the DataFrame shape, a light import."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ibrnet import RetryPolicy
from ibrnet.batches import BatchLimits, plan_chunks, request_body
from ibrnet.frames import results_frame
from ibrnet.inputs import as_formulas, as_properties
from ibrnet.retry import parse_retry_after
from tests.api.harness import oqmd_formulas


@pytest.mark.parametrize(("max_items", "max_bytes"), [(40, 2048), (1000, 1024), (7, 10_000)])
def test_chunks_cover_the_list_in_order_and_each_is_as_large_as_the_limits_allow(max_items, max_bytes):
    formulas = oqmd_formulas(500, offset=3000)
    formulas[10] = "CuSO4·5H2O"  # non-ASCII: counted in UTF-8 bytes
    properties = ["band_gap", "formation_enthalpy"]
    chunks = plan_chunks(formulas, properties, BatchLimits(max_items, max_bytes))
    assert [i for chunk in chunks for i in chunk] == list(range(len(formulas)))
    for number, chunk in enumerate(chunks):
        body = request_body(formulas[chunk.start : chunk.stop], properties)
        assert len(chunk) <= max_items and len(body) <= max_bytes
        if number + 1 < len(chunks) and len(chunk) < max_items:  # not cut by count: one more would not fit
            assert len(request_body(formulas[chunk.start : chunk.stop + 1], properties)) > max_bytes - 1


def test_a_formula_larger_than_any_body_travels_alone():
    formulas = ["Fe2O3", "Fe" + "1" * 5000, "NaCl", "KBr"]
    chunks = plan_chunks(formulas, None, BatchLimits(100, 1024))
    assert chunks == [range(0, 1), range(1, 2), range(2, 4)]


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    in_a_minute = email.utils.formatdate(now + 60, usegmt=True)
    assert 58 <= parse_retry_after(in_a_minute, now=now) <= 61
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


def test_back_off_doubles_to_its_cap_with_jitter_and_the_default_rides_out_a_restart():
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=10.0)
    for retry in range(1, 12):
        ceiling = min(10.0, 0.5 * 2 ** (retry - 1))
        waits = [policy.backoff(retry) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert max(waits) - min(waits) > ceiling / 10  # really jittered
    # The least the default waits over all its retries: more than a 20 s restart.
    default = RetryPolicy()
    shortest = sum(min(default.max_delay, default.base_delay * 2 ** (n - 1)) / 2 for n in range(1, 10))
    assert default.attempts == 10 and 20 < shortest < 60
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_an_interval_and_unknown_fields_get_columns_and_the_level_goes_to_attrs():
    # The service may add {"interval": {"low", "high", "level"}} and other fields to an answer: the
    # shaper handles them without knowing them in advance.
    answer = {"value": -1.5, "unit": "eV/atom", "model": "m", "version": "v1", "uncertainty": 0.1}
    results = [
        {
            "formula": "Fe2O3",
            "composition": "Fe2O3",
            "predictions": {
                "formation_enthalpy": {**answer, "interval": {"low": -1.7, "high": -1.3, "level": 0.9}},
                "e_above_hull": {"value": 0.02, "unit": "eV/atom", "uncertainty": None, "p_stable": 0.4},
            },
        },
        {"formula": "Xx", "error": {"code": "unknown_element", "message": "unknown element 'Xx'"}},
    ]
    frame = results_frame(results, ["formation_enthalpy", "e_above_hull"])
    assert list(frame.columns) == [
        "formula",
        "composition",
        "formation_enthalpy",
        "formation_enthalpy_uncertainty",
        "formation_enthalpy_low",
        "formation_enthalpy_high",
        "e_above_hull",
        "e_above_hull_uncertainty",
        "p_stable",  # named as the service's CSV and a screen's sort_by name it
        "error_code",
        "error_message",
    ]
    assert frame.loc[0, ["formation_enthalpy_low", "formation_enthalpy_high"]].tolist() == [-1.7, -1.3]
    assert frame.loc[1, ["formation_enthalpy_low", "p_stable"]].isna().all()
    assert frame.loc[0, "p_stable"] == 0.4 and np.isnan(frame.loc[0, "e_above_hull_uncertainty"])
    assert frame.attrs["models"]["formation_enthalpy"] == {
        "model": "m",
        "version": "v1",
        "unit": "eV/atom",
        "interval_level": 0.9,
    }


def test_inputs_one_string_is_one_formula_and_blank_cells_become_error_rows():
    assert as_formulas("Fe2O3") == ["Fe2O3"]
    assert as_formulas(["Fe2O3", None, float("nan"), np.str_("NaCl")]) == ["Fe2O3", "", "", "NaCl"]
    assert as_properties("band_gap") == ["band_gap"] and as_properties(None) is None
    with pytest.raises(ValueError):
        as_properties([])


def test_import_ibrnet_loads_neither_onnxruntime_nor_pymatgen_nor_the_service():
    code = (
        "import sys, ibrnet; print(sorted(m for m in ('onnxruntime', 'pymatgen', 'app') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    assert out.strip() == "[]"
