"""Every bad input gets a 4xx with the error body of design.md; nothing reaches a 500."""

from __future__ import annotations

import gzip

import pytest

from tests.api.harness import make_settings, metric_value, serve

pytestmark = pytest.mark.anyio

LONG_FORMULA = "Fe2O3" * 60  # 300 characters, over the default limit of 256

# (body sent to /predict, status, code, text the message must contain)
BAD_FORMULAS = [
    ({"formula": ""}, 422, "empty_formula", "empty"),
    ({"formula": "   "}, 422, "empty_formula", "empty"),
    ({"formula": "Fe2O3)"}, 422, "invalid_formula", ")"),
    ({"formula": "Xx2O3"}, 422, "unknown_element", "Xx"),
    ({"formula": "He"}, 422, "unsupported_element", "He"),
    ({"formula": "Fe0O"}, 422, "invalid_amount", "Fe"),
    ({"formula": LONG_FORMULA}, 422, "formula_too_long", "256"),
    ({"formula": 5}, 422, "invalid_request", "formula"),
    ({"formula": None}, 422, "invalid_request", "formula"),
    ({"formula": ["Fe2O3"]}, 422, "invalid_request", "formula"),
    ({}, 422, "invalid_request", "formula"),
    ({"formula": "NaCl", "properties": "band_gap"}, 422, "invalid_request", "properties"),
    ({"formula": "NaCl", "properties": []}, 422, "invalid_request", "properties"),
    ({"formula": "NaCl", "properties": ["nope"]}, 422, "unknown_property", "nope"),
    ({"formula": "NaCl", "extra": 1}, 422, "invalid_request", "extra"),
]


def assert_error_body(response, status: int, code: str, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert mentions in error["message"] or mentions in str(error.get("field", ""))
    return error


@pytest.mark.parametrize(("payload", "status", "code", "mentions"), BAD_FORMULAS)
async def test_bad_single_requests(client, payload, status, code, mentions):
    assert_error_body(await client.post("/predict", json=payload), status, code, mentions)


@pytest.mark.parametrize(
    ("content", "code", "status"),
    [
        (b'{"formula": "Fe2O3"', "invalid_json", 400),
        (b"{bad json}", "invalid_json", 400),
        (b"", "invalid_request", 422),
        (b"[]", "invalid_request", 422),
        (b'"Fe2O3"', "invalid_request", 422),
        (b"null", "invalid_request", 422),
        (b'{"formula": "Fe\xff"}', "invalid_json", 400),  # not UTF-8
        (b'{"formula": "Fe2O3\\u0000"}', "invalid_formula", 422),
    ],
)
async def test_malformed_bodies(client, content, code, status):
    response = await client.post("/predict", content=content, headers={"Content-Type": "application/json"})
    assert_error_body(response, status, code)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        # (a wrong-typed item is refused alone: test_predict_api's not-a-string test)
        ({"formulas": "Fe2O3"}, "formulas"),
        ({"formula": "Fe2O3"}, "formulas"),
    ],
)
async def test_wrong_types_in_a_batch_name_the_field(client, payload, field):
    error = assert_error_body(await client.post("/predict/batch", json=payload), 422, "invalid_request")
    assert error["field"] == field
    assert field in error["message"]


async def test_weird_formulas_never_fail_a_batch(client):
    weird = [
        "((((",
        "))",
        "Fe2O3" * 51,
        "1e400",
        "Fe1e308O",
        "NaN",
        "inf",
        "Fe-1O",
        "\x00",
        "🙂",
        "Fe2O3 ",
        "fe2o3",
        "FE2O3",
        "Fe2+O3",
        "[Fe]2O3",
        "Fe2O3·5H2O",
        "Fe(OH)3",
        "Fe0.000000001O",
        "O" * 250,
        "H1000000000000000000000000",
        "Og",
        "Uue",
        "D2O",
        "Fe2 O3",
        "Fe..O",
        "·",
        "",
        "Ca(",
        "2Fe",
    ]
    response = await client.post("/predict/batch", json={"formulas": weird})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["formula"] for item in results] == weird
    for item in results:
        if "error" in item:
            assert item["error"]["code"] and item["error"]["message"]
        else:
            assert all(
                p["value"] is None or isinstance(p["value"], float) for p in item["predictions"].values()
            )
    for formula in weird:  # and one at a time: 200 or 422, never a 5xx
        single = await client.post("/predict", json={"formula": formula})
        assert single.status_code in (200, 422), (formula, single.text)


async def test_too_many_items_names_the_limit(models_dir, sqlite_url):
    async with serve(make_settings(models_dir, sqlite_url, max_batch_items=5)) as (_, client):
        response = await client.post("/predict/batch", json={"formulas": ["NaCl"] * 6})
        error = assert_error_body(response, 413, "too_many_items", "5")
        assert error["limit"] == 5
        ok = await client.post("/predict/batch", json={"formulas": ["NaCl"] * 5})
        assert ok.status_code == 200


async def test_oversized_bodies_are_refused(models_dir, sqlite_url):
    async with serve(make_settings(models_dir, sqlite_url, max_body_bytes=4096)) as (_, client):
        big = {"formulas": ["NaCl"] * 1000}  # about 9 kB
        error = assert_error_body(
            await client.post("/predict/batch", json=big), 413, "payload_too_large", "4096"
        )
        assert error["limit"] == 4096

        # Without Content-Length (chunked upload) the body is counted as it arrives.
        async def chunks():
            for _ in range(10):
                yield b" " * 1000

        response = await client.post(
            "/predict/batch", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error_body(response, 413, "payload_too_large")

        async def small_chunks():
            yield b'{"formulas": '
            yield b'["NaCl"]}'

        response = await client.post(
            "/predict/batch", content=small_chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200, response.text


async def test_unknown_routes_and_methods(client):
    assert_error_body(await client.get("/nope"), 404, "not_found", "/nope")
    assert_error_body(await client.get("/predict"), 405, "method_not_allowed", "GET")
    assert_error_body(await client.get("/redoc"), 404, "not_found")


async def test_errors_are_counted_by_code(client):
    await client.post("/predict", json={"formula": "Xx"})
    metrics = (await client.get("/metrics")).text
    assert (
        metric_value(metrics, "ibrnet_http_request_failures_total", code="unknown_element", route="/predict")
        == 1
    )
    assert metric_value(metrics, "ibrnet_formula_errors_total", code="unknown_element") == 1


async def test_a_body_in_another_format_is_a_415_naming_the_header(client):
    """A CSV file posted to /predict/batch was 'not valid JSON: expected ident at line 1 column 2'."""
    as_csv = await client.post(
        "/predict/batch", content=b"formula\nNaCl\n", headers={"content-type": "text/csv"}
    )
    error = assert_error_body(as_csv, 415, "unsupported_media_type")
    assert error["header"] == "content-type" and "text/csv" in error["message"]
    gzipped = await client.post(
        "/predict",
        content=gzip.compress(b'{"formula": "NaCl"}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    error = assert_error_body(gzipped, 415, "unsupported_media_type")
    assert error["header"] == "content-encoding" and "gzip" in error["message"]
    # JSON under a lazy content type (curl -d's default, text/plain) is still read as JSON.
    for media_type in ("application/x-www-form-urlencoded", "text/plain"):
        answered = await client.post(
            "/predict", content=b'{"formula": "NaCl"}', headers={"content-type": media_type}
        )
        assert answered.status_code == 200, answered.text


async def test_an_error_body_echoes_a_bounded_part_of_what_was_sent(settings, tmp_path):
    # A 30 MB key came back three times (90 MB); a 400,000-column header as a 3.6 MB list.
    key = "k" * 2_000_000
    async with serve(settings) as (_, client):
        unknown_key = await client.post(
            "/predict/batch", content=b'{"' + key.encode() + b'":1,"formulas":["NaCl"]}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        error = assert_error_body(unknown_key, 422, "invalid_request", "kkkk")
        assert len(unknown_key.content) < 5_000
        assert error["field"] == "k" * 100 + "…"

        filter_key = await client.post("/screen", json={"formulas": ["NaCl"], "filters": {key: {"max": 1}}})
        error = assert_error_body(filter_key, 422, "invalid_request", "at most 64 characters")
        assert len(filter_key.content) < 5_000 and error["field"] == f"filters.{'k' * 100}….[key]"

        header = ",".join(f"c{i}" for i in range(50_000))
        wide = await client.post(
            "/screen", files={"file": ("x.csv", f"{header}\n" + "1," * 49_999 + "1\n", "text/csv")}
        )
        error = assert_error_body(wide, 422, "missing_column", "c0")
        assert len(wide.content) < 10_000
        assert error["columns"][:2] == ["c0", "c1"] and error["columns"][-1] == "… 49,900 more"


async def test_a_key_named_twice_is_refused_not_read_as_its_last_value(client):
    json_type = {"content-type": "application/json"}
    twice = await client.post(
        "/predict", content=b'{"formula": "NaCl", "formula": "Fe2O3"}', headers=json_type
    )
    error = assert_error_body(twice, 422, "duplicate_key", "'formula'")
    assert error["key"] == "formula"
    batch = b'{"formulas": ["NaCl"], "properties": ["band_gap"], "properties": ["volume_per_atom"]}'
    assert_error_body(
        await client.post("/predict/batch", content=batch, headers=json_type), 422, "duplicate_key"
    )
    # A screen whose filters were written twice kept only the second; nested objects count too.
    screen = b'{"formulas": ["NaCl"], "filters": {"band_gap": {"min": 1}, "band_gap": {"max": 0.5}}}'
    error = assert_error_body(
        await client.post("/screen", content=screen, headers=json_type), 422, "duplicate_key"
    )
    assert error["key"] == "band_gap"
    options = '{"sort_by": "band_gap", "sort_by": "volume_per_atom"}'
    upload = await client.post(
        "/screen", files={"file": ("x.csv", "formula\nNaCl\n", "text/csv")}, data={"options": options}
    )
    assert_error_body(upload, 422, "duplicate_key", "'sort_by'")
    # Equal values in different objects are no duplicate, and one key once is answered.
    fine = await client.post(
        "/predict", content=b'{"formula": "NaCl", "properties": ["band_gap"]}', headers=json_type
    )
    assert fine.status_code == 200, fine.text
