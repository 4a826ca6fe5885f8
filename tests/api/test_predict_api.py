"""POST /predict and /predict/batch against the real app, real ORT sessions and a SQLite cache."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.schemas import BatchPredictionPublic, PredictionPublic
from tests.api.harness import flush_cache_writes, oqmd_formulas
from tests.model_factory import STANDARD_MODELS, reference_outputs

pytestmark = pytest.mark.anyio

PROPERTIES = sorted(str(spec["property_name"]) for spec in STANDARD_MODELS)
FIELDS = {
    "value",
    "unit",
    "model",
    "version",
    "uncertainty",
    "interval",
    "cached",
    "in_domain",
    "domain_warning",
}


def expected(app: FastAPI, formula: str, property_name: str) -> tuple[float, float]:
    """The answer computed without the service: parse, featurize, numpy forward pass."""
    model = app.state.registry.get(property_name)
    features = get_featurizer("ef").transform([parse_formula(formula)])
    value, std = reference_outputs(model.directory, features)[0]
    return float(value), float(std)


async def test_predict_answers_every_property_with_the_contract_fields(app, client):
    response = await client.post("/predict", json={"formula": "Fe2O3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"formula", "composition", "predictions"}
    assert body["formula"] == "Fe2O3"
    assert body["composition"] == parse_formula("Fe2O3").canonical_key
    assert sorted(body["predictions"]) == PROPERTIES
    for name, prediction in body["predictions"].items():
        model = app.state.registry.get(name)
        assert set(prediction) == FIELDS
        assert prediction["unit"] == model.unit
        assert prediction["model"] == model.name
        assert prediction["version"] == model.version == model.manifest.onnx_sha256[:12]
        assert prediction["cached"] is False
        value, std = expected(app, "Fe2O3", name)
        assert prediction["value"] == pytest.approx(value, rel=1e-5, abs=1e-5)
        if model.manifest.output.kind == "ensemble":  # the ensemble's std flows through
            assert prediction["uncertainty"] == pytest.approx(std, rel=1e-5, abs=1e-5)
            assert prediction["uncertainty"] > 0
            scale = model.manifest.output.interval.scale  # value +- scale * sigma, at its level
            assert prediction["interval"] == {
                "low": pytest.approx(prediction["value"] - scale * prediction["uncertainty"]),
                "high": pytest.approx(prediction["value"] + scale * prediction["uncertainty"]),
                "level": 0.9,
            }
        else:
            assert prediction["uncertainty"] is None
            assert prediction["interval"] is None


async def test_second_request_for_the_same_composition_is_cached(app, client):
    first = (await client.post("/predict", json={"formula": "Fe2O3"})).json()
    await flush_cache_writes(app)
    # Another way to write the same fractional composition shares the canonical key and the row.
    second = (await client.post("/predict", json={"formula": "O3Fe2"})).json()
    assert second["composition"] == first["composition"]
    for name in PROPERTIES:
        assert second["predictions"][name]["cached"] is True
        assert second["predictions"][name]["value"] == pytest.approx(first["predictions"][name]["value"])
        assert second["predictions"][name]["uncertainty"] == first["predictions"][name]["uncertainty"] or (
            second["predictions"][name]["uncertainty"]
            == pytest.approx(first["predictions"][name]["uncertainty"])
        )


async def test_properties_select_models(client):
    body = (
        await client.post("/predict", json={"formula": "NaCl", "properties": ["band_gap", "band_gap"]})
    ).json()
    assert list(body["predictions"]) == ["band_gap"]


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
async def test_unknown_property_is_refused_by_name(client, path):
    payload = {"properties": ["band_gap", "superconductivity"]}
    payload |= {"formula": "NaCl"} if path == "/predict" else {"formulas": ["NaCl"]}
    response = await client.post(path, json=payload)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_property"
    assert error["property"] == "superconductivity"
    assert "superconductivity" in error["message"]


async def test_batch_keeps_input_order_and_isolates_bad_formulas(app, client):
    formulas = ["NaCl", "Xx2O3", "Fe2O3", "He", "", "Fe4O6", "GaAs"]
    response = await client.post("/predict/batch", json={"formulas": formulas})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["formula"] for item in results] == formulas
    errors = {item["formula"]: item["error"]["code"] for item in results if "error" in item}
    assert errors == {"Xx2O3": "unknown_element", "He": "unsupported_element", "": "empty_formula"}
    good = [item for item in results if "error" not in item]
    for item in good:
        assert sorted(item["predictions"]) == PROPERTIES
        for name in PROPERTIES:
            value, _ = expected(app, item["formula"], name)
            assert item["predictions"][name]["value"] == pytest.approx(value, rel=1e-5, abs=1e-5)
    # Fe2O3 and Fe4O6 are one composition: one key, one value.
    by_formula = {item["formula"]: item for item in good}
    assert by_formula["Fe2O3"]["composition"] == by_formula["Fe4O6"]["composition"]


async def test_a_batch_item_that_is_not_a_string_is_refused_alone(client):
    """{"formulas": ["NaCl", 1, null, ...]} was a 422 for the whole batch (hostile pass)."""
    items = ["NaCl", 1, None, ["x"], {"a": 1}, True, 2.5, "1"]
    response = await client.post("/predict/batch", json={"formulas": items})
    as_csv = await client.post("/predict/batch", json={"formulas": items}, headers={"accept": "text/csv"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert "predictions" in results[0] and len(results) == len(items)
    kinds = ["a number", "null", "an array", "an object", "a boolean", "a number"]
    for result, item, kind in zip(results[1:7], items[1:7], kinds, strict=True):
        assert result["error"]["code"] == "invalid_formula"
        assert result["formula"] == json.dumps(item)  # its JSON text, so every format can echo it
        assert f"not {kind}" in result["error"]["message"]
    # The string "1" is a formula the parser refuses for what it is, not for its type.
    assert (
        results[7]["error"]["code"] == "invalid_formula"
        and "JSON string" not in results[7]["error"]["message"]
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["error_code"] for row in rows][1:] == ["invalid_formula"] * 7 and rows[2]["formula"] == "null"


async def test_batch_of_real_formulas_matches_single_predictions(app, client):
    formulas = oqmd_formulas(300, split="val")  # more than one pipeline chunk of the batcher (64)
    batch = (
        await client.post("/predict/batch", json={"formulas": formulas, "properties": ["band_gap"]})
    ).json()
    assert len(batch["results"]) == len(formulas)
    features = get_featurizer("ef").transform([parse_formula(f) for f in formulas])
    reference = reference_outputs(app.state.registry.get("band_gap").directory, features)[:, 0]
    values = np.array([item["predictions"]["band_gap"]["value"] for item in batch["results"]])
    np.testing.assert_allclose(values, reference, rtol=1e-5, atol=1e-5)


async def test_batch_streams_csv_with_the_same_rows(client):
    formulas = ["NaCl", "Xx", "GaAs", "Fe2O3,Al"]
    as_json = (await client.post("/predict/batch", json={"formulas": formulas})).json()["results"]
    response = await client.post(
        "/predict/batch", json={"formulas": formulas}, headers={"Accept": "text/csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["formula"] for row in rows] == formulas  # a comma inside a formula is quoted
    for row, item in zip(rows, as_json, strict=True):
        if "error" in item:
            assert row["error_code"] == item["error"]["code"]
            assert row["band_gap"] == ""
            continue
        assert row["composition"] == item["composition"]
        for name in PROPERTIES:
            prediction = item["predictions"][name]
            assert float(row[name]) == pytest.approx(prediction["value"])
            assert row[f"{name}_version"] == prediction["version"]
            assert row[f"{name}_unit"] == prediction["unit"]
            if prediction["uncertainty"] is None:
                assert row[f"{name}_uncertainty"] == row[f"{name}_low"] == row[f"{name}_high"] == ""
            else:
                assert float(row[f"{name}_uncertainty"]) == pytest.approx(prediction["uncertainty"])
                assert float(row[f"{name}_low"]) == pytest.approx(prediction["interval"]["low"])
                assert float(row[f"{name}_high"]) == pytest.approx(prediction["interval"]["high"])


async def test_batch_streams_ndjson_with_the_same_rows(app, client):
    formulas = [*oqmd_formulas(150, split="val", offset=1000), "Zz"]
    response = await client.post(
        "/predict/batch", json={"formulas": formulas}, headers={"Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["formula"] for line in lines] == formulas
    assert lines[-1]["error"]["code"] == "unknown_element"
    await flush_cache_writes(app)
    again = (await client.post("/predict/batch", json={"formulas": formulas})).json()["results"]
    for line, item in zip(lines[:-1], again[:-1], strict=True):
        assert line["composition"] == item["composition"]
        for name in PROPERTIES:
            assert item["predictions"][name]["cached"] is True
            assert line["predictions"][name]["value"] == pytest.approx(item["predictions"][name]["value"])


async def test_empty_batch_is_an_empty_answer(client):
    response = await client.post("/predict/batch", json={"formulas": []})
    assert response.status_code == 200
    assert response.json() == {"results": []}


async def test_duplicates_in_a_batch_are_answered_each_time(client):
    results = (await client.post("/predict/batch", json={"formulas": ["NaCl"] * 5 + ["ClNa"]})).json()[
        "results"
    ]
    values = {item["predictions"]["band_gap"]["value"] for item in results}
    assert len(results) == 6 and len(values) == 1


async def test_response_matches_the_documented_schema(client: httpx.AsyncClient):
    single = (await client.post("/predict", json={"formula": "LiFePO4"})).json()
    PredictionPublic.model_validate(single)
    batch = (await client.post("/predict/batch", json={"formulas": ["LiFePO4", "Qq"]})).json()
    BatchPredictionPublic.model_validate(batch)


@pytest.mark.parametrize("accept", ["text/csv", "application/x-ndjson"])
async def test_streamed_formats_arrive_in_pieces(app, accept):
    """The rows leave as each chunk is computed, not as one body at the end."""
    formulas = oqmd_formulas(2500, split="val", offset=2000)  # three pipeline chunks
    body = json.dumps({"formulas": formulas, "properties": ["band_gap"]}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict/batch", "raw_path": b"/predict/batch", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("ibrnet.test", 80),
        "headers": [(b"content-type", b"application/json"), (b"accept", accept.encode()),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    pieces: list[bytes] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # no disconnect while the response streams
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            pieces.append(message["body"])

    await app(scope, receive, send)
    assert len(pieces) >= 3
    text = b"".join(pieces).decode()
    rows = text.splitlines()
    assert len(rows) == len(formulas) + (1 if accept == "text/csv" else 0)  # CSV has a header


def test_an_item_nested_deeper_than_json_can_write_back_is_still_refused_alone():
    """json.dumps of a deeply nested item raised RecursionError (a 500 from /screen)."""
    from app.chemistry.formula import FormulaError, NotAString

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    text = NotAString.of(deep)
    assert text == "[" * 100 and text.kind == "an array"  # written only as far as the echo shows
    with pytest.raises(FormulaError, match="not an array"):
        parse_formula(text)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/html, */*;q=0.8", "application/json"),  # what a browser sends
        ("text/*", "text/csv"),
        ("application/json;q=0, */*", "text/csv"),  # JSON refused, anything else welcome
        ("application/x-ndjson;q=0.5, text/csv;q=0.9", "text/csv"),
        ("image/png", 406),
        ("application/json;q=0", 406),
        ("text/html, image/*", 406),
    ],
)
async def test_the_accept_header_is_honoured_or_refused_with_406(client, accept, expected):
    headers = {} if accept is None else {"accept": accept}
    response = await client.post("/predict/batch", json={"formulas": ["NaCl"]}, headers=headers)
    if expected == 406:
        assert response.status_code == 406
        error = response.json()["error"]
        assert error["code"] == "not_acceptable" and accept in error["message"]
        assert "application/json" in error["accepted"] and "text/csv" in error["accepted"]
    else:
        assert response.status_code == 200 and response.headers["content-type"].startswith(expected)


async def test_predict_sends_json_only_and_says_so(client):
    for accept in ("text/csv", "image/png"):
        response = await client.post("/predict", json={"formula": "NaCl"}, headers={"accept": accept})
        assert response.status_code == 406 and response.json()["error"]["accepted"] == ["application/json"]
    browser = await client.post(
        "/predict", json={"formula": "NaCl"}, headers={"accept": "text/html, */*;q=0.8"}
    )
    assert browser.status_code == 200 and browser.json()["composition"] == "NaCl"
