"""Client.predict and ibrnet.predict against a real ``ibrnet serve``: rows, order, refusals, splitting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pandas as pd
import pytest

import ibrnet
from tests.api.harness import oqmd_formulas
from tests.client.conftest import MAX_BATCH_ITEMS, MAX_BODY_BYTES
from tests.client.helpers import assert_same_frame, batch_requests, same_number

PROPERTIES = ["band_gap", "formation_enthalpy", "volume_per_atom"]  # the service's order (by model folder)
COLUMNS = [
    "formula",
    "composition",
    "band_gap",
    "band_gap_uncertainty",
    "formation_enthalpy",
    "formation_enthalpy_uncertainty",
    "volume_per_atom",
    "volume_per_atom_uncertainty",
    "error_code",
    "error_message",
]
# Where a row was predicted: the test ensemble's 90% interval (tests/model_factory.py) comes too.
PREDICTED_COLUMNS = [*COLUMNS[:8], "volume_per_atom_low", "volume_per_atom_high", *COLUMNS[8:]]


def test_a_refused_formula_is_a_row_and_the_others_are_the_services_answers(client, server):
    first, last = oqmd_formulas(2, offset=7)
    formulas = [first, "Xx2", last]

    frame = client.predict(formulas, progress=False)

    assert list(frame.columns) == PREDICTED_COLUMNS
    assert frame["formula"].tolist() == formulas
    assert frame["error_code"].tolist() == [None, "unknown_element", None]
    assert frame["error_message"][0] is None and "Xx" in frame["error_message"][1]
    assert frame["composition"][1] is None
    assert frame.loc[1, PROPERTIES].isna().all()

    direct = httpx.post(f"{server}/predict/batch", json={"formulas": formulas}, timeout=30).json()["results"]
    assert direct[1]["error"]["code"] == "unknown_element"
    assert frame["error_message"][1] == direct[1]["error"]["message"]
    for row in (0, 2):
        answer = direct[row]
        assert frame["composition"][row] == answer["composition"]
        assert answer["predictions"].keys() == set(PROPERTIES)
        for name, prediction in answer["predictions"].items():
            assert same_number(frame[name][row], prediction["value"]), (row, name)
            assert same_number(frame[f"{name}_uncertainty"][row], prediction["uncertainty"]), (row, name)
            assert frame.attrs["models"][name] == {
                "model": prediction["model"],
                "version": prediction["version"],
                "unit": prediction["unit"],
                **({"interval_level": 0.9} if prediction["interval"] else {}),
            }
            if prediction["interval"]:
                assert same_number(frame[f"{name}_low"][row], prediction["interval"]["low"])
                assert same_number(frame[f"{name}_high"][row], prediction["interval"]["high"])
    # Only the ensemble reports an uncertainty; the point models' column is empty, not zero.
    assert frame["volume_per_atom_uncertainty"][[0, 2]].notna().all()
    assert frame["band_gap_uncertainty"].isna().all()


def test_a_long_list_is_split_to_the_service_limit_and_equals_the_in_process_answer(
    client, server, models_dir: Path
):
    formulas = oqmd_formulas(300, offset=100)
    assert (
        max(len(text) for text in formulas) * MAX_BATCH_ITEMS < MAX_BODY_BYTES - 100
    )  # items bind, not bytes
    before = batch_requests(server)

    frame = client.predict(formulas, progress=False)

    # Exactly one request per 40 formulas, none retried or refused.
    assert batch_requests(server) - before == math.ceil(len(formulas) / MAX_BATCH_ITEMS)
    assert frame["formula"].tolist() == formulas
    assert frame["error_code"].isna().all()
    local = ibrnet.predict(formulas, models_dir=models_dir)
    assert_same_frame(frame, local)
    assert frame.attrs["models"] == local.attrs["models"]


def test_requests_are_cut_to_the_body_limit_and_an_oversized_formula_is_its_own_error_row(
    client, server, models_dir: Path
):
    # 120-character formulas: 40 of them (the item limit) would be a 5 KB body; the limit is 2 KiB.
    digits = 110
    formulas = [f"Fe{1 + k / 1000:.{digits}f}O3" for k in range(60)]
    too_long = "Fe1." + "0" * 1200 + "O3"  # fits in a body, but longer than the formula limit (256)
    too_large = "Fe1." + "0" * 3000 + "O3"  # does not fit in any body: the service refuses the request
    sent = [*formulas[:30], too_long, *formulas[30:], too_large]
    before, refused_before = batch_requests(server), batch_requests(server, "413", route="unmatched")

    frame = client.predict(sent, progress=False)

    assert frame["formula"].tolist() == sent
    assert frame["error_code"].tolist() == [None] * 30 + ["formula_too_long"] + [None] * 30 + [
        "payload_too_large"
    ]
    assert "256" in frame["error_message"][30] and "2048" in frame["error_message"][61]
    predicted = frame[frame["error_code"].isna()].reset_index(drop=True)
    assert_same_frame(predicted, ibrnet.predict(formulas, models_dir=models_dir))
    # As few bodies as fit the limit, in order; only the lone giant was refused, once.
    assert batch_requests(server) - before == len(fitting_bodies(sent[:-1], MAX_BODY_BYTES)) == 5
    assert batch_requests(server, "413", route="unmatched") - refused_before == 1


def fitting_bodies(formulas: list[str], limit: int) -> list[list[str]]:
    """Consecutive groups, each as large as a compact JSON body within ``limit`` bytes allows."""
    groups: list[list[str]] = [[]]
    for text in formulas:
        grown = [*groups[-1], text]
        body = json.dumps({"formulas": grown}, separators=(",", ":")).encode()
        if len(body) <= limit and len(grown) <= MAX_BATCH_ITEMS:
            groups[-1] = grown
        else:
            groups.append([text])
    return groups


def test_an_unknown_property_raises_service_error_here_and_in_process(client, models_dir: Path):
    with pytest.raises(ibrnet.ServiceError) as served:
        client.predict(["Fe2O3", "NaCl"], properties=["density"], progress=False)
    assert served.value.status == 422 and served.value.code == "unknown_property"
    assert "density" in served.value.message

    with pytest.raises(ibrnet.ServiceError) as local:
        ibrnet.predict(["Fe2O3"], properties=["density"], models_dir=models_dir)
    assert (local.value.status, local.value.code) == (422, "unknown_property")


def test_some_properties_only_and_the_same_frame_in_process(client, models_dir: Path):
    formulas = ["Fe2O3", "LiFePO4", "HeO2", "NaCl", ""]
    frame = client.predict(formulas, properties="volume_per_atom", progress=False)
    assert list(frame.columns) == [
        "formula",
        "composition",
        "volume_per_atom",
        "volume_per_atom_uncertainty",
        "volume_per_atom_low",
        "volume_per_atom_high",
        "error_code",
        "error_message",
    ]
    assert (frame["volume_per_atom_low"] < frame["volume_per_atom"])[[0, 1, 3]].all()
    assert frame["error_code"][[0, 1, 3]].isna().all()
    assert frame["error_code"][[2, 4]].notna().all()
    assert frame["composition"].tolist()[:2] == ["Fe2O3", "LiFePO4"]
    local = ibrnet.predict(pd.Series(formulas), properties=["volume_per_atom"], models_dir=models_dir)
    assert_same_frame(frame, local)


def test_nothing_predictable_still_has_every_property_column(client):
    frame = client.predict(["Xx2", "HeO2"], progress=False)
    assert list(frame.columns) == COLUMNS and frame["error_code"].notna().all()
    empty = client.predict([], progress=False)
    assert list(empty.columns) == COLUMNS and len(empty) == 0


def test_the_progress_bar_counts_formulas(client, capsys):
    formulas = oqmd_formulas(100, offset=500)
    frame = client.predict(formulas, progress=True)
    assert len(frame) == 100
    assert "100/100" in capsys.readouterr().err
