"""Inputs found by fuzzing POST /screen and its results: each is refused with a 4xx naming it.

Before the fixes, each of these answered 500 (or, for NaN, queued a job that silently kept
no rows and echoed its bound as null).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from app.screening.enumerate import ChemicalSpace
from tests.screening.helpers import wait_for

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000  # past Python's recursion limit for json.loads
HUGE_INT = b"9" * 5000  # past Python's 4300-digit limit for int("...")


def assert_refused(response, status: int, code: str, mentions: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert mentions in error["message"], error
    return error


async def assert_nothing_queued(client) -> None:
    assert (await client.get("/screen")).json()["jobs"] == []


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"formulas": ' + DEEP + b"}", "nested too deeply"),
        (b'{"formulas": ["Fe2O3"], "filters": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "nested"),
        (b'{"formulas": ["Fe2O3"], "sort_by": "band_gap", "top_k": ' + HUGE_INT + b"}", "digits"),
        (b'{"formulas": ["Fe2O3"]', "not valid JSON"),
    ],
)
async def test_unreadable_json_bodies_are_400_invalid_json(client, body: bytes, mentions: str):
    assert_refused(await client.post("/screen", content=body, headers=JSON), 400, "invalid_json", mentions)
    await assert_nothing_queued(client)


@pytest.mark.parametrize("options", [DEEP.decode(), '{"top_k": ' + HUGE_INT.decode() + "}"])
async def test_unreadable_upload_options_are_422_invalid_options(client, options: str):
    response = await client.post(
        "/screen",
        files={"file": ("x.csv", b"formula\nFe2O3\n", "text/csv")},
        data={"options": options},
    )
    assert_refused(response, 422, "invalid_options", "'options'")
    await assert_nothing_queued(client)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_non_finite_filter_bounds_are_refused(client, literal: bytes):
    body = b'{"formulas": ["Fe2O3"], "filters": {"band_gap": {"min": ' + literal + b"}}}"
    response = await client.post("/screen", content=body, headers=JSON)
    error = assert_refused(response, 422, "invalid_request", "filters.band_gap.min")
    assert error["field"] == "filters.band_gap.min"
    await assert_nothing_queued(client)


async def test_an_empty_property_list_names_properties(client):
    # It used to be read as "no model is loaded" (422 no_models), which blamed the service.
    response = await client.post("/screen", json={"formulas": ["Fe2O3"], "properties": []})
    assert assert_refused(response, 422, "invalid_request", "properties")["field"] == "properties"
    await assert_nothing_queued(client)


async def test_an_enumeration_too_large_for_64_bits_is_still_a_413(client):
    # 20 elements up to 1000 atoms: ~1e41 compositions, a count orjson cannot write.
    chemsys = "H-Li-Be-B-C-N-O-F-Na-Mg-Al-Si-P-S-Cl-K-Ca-Sc-Ti-V"
    response = await client.post("/screen", json={"chemsys": chemsys, "max_atoms": 1000})
    error = assert_refused(response, 413, "too_many_compositions", "compositions")
    count = ChemicalSpace.from_chemsys(chemsys, 1000).count()
    assert count >= 2**64 and error["count"] == count
    await assert_nothing_queued(client)


async def test_result_offsets_beyond_64_bits_are_422_not_a_database_error(client):
    submitted = (await client.post("/screen", json={"formulas": ["Fe2O3", "NaCl"]})).json()
    await wait_for(client, submitted["id"])
    results = f"/screen/{submitted['id']}/results"
    too_far = await client.get(results, params={"offset": 2**63})
    assert assert_refused(too_far, 422, "invalid_request", "offset")["field"] == "offset"
    last = await client.get(results, params={"offset": 2**63 - 1})  # the largest a database takes
    assert last.status_code == 200, last.text
    assert last.json()["results"] == [] and last.json()["count"] == 2


@pytest.mark.parametrize(
    ("sort_by", "ascending", "expected"),
    [
        ("p_stable", None, False),
        ("e_above_hull", None, True),
        ("band_gap", None, True),
        ("p_stable", True, True),
    ],
)
def test_a_ranking_starts_from_the_columns_best_end_unless_told(sort_by, ascending, expected):
    """top_k by p_stable means the most likely stable; by an energy, the lowest. A job records the
    order it used, so a resumed or paged job never reads it differently."""
    from app.screening.spec import ScreenRequest

    options = {} if ascending is None else {"ascending": ascending}
    request = ScreenRequest(chemsys="Li-O", sort_by=sort_by, top_k=5, **options)
    assert request.ascending is expected and request.model_dump()["ascending"] is expected


async def test_a_large_body_is_read_while_other_clients_are_answered(client):
    """A million non-string items (3 MiB) take a second or more to validate; on the event loop
    that was a second in which /health waited. Read off the loop, /health answers meanwhile."""
    body = json.dumps({"formulas": [1] * 1_000_000, "properties": ["no_such_property"]}).encode()
    big = asyncio.create_task(client.post("/screen", content=body, headers=JSON))
    answered_meanwhile = 0
    while not big.done():
        assert (await client.get("/health")).status_code == 200
        answered_meanwhile += not big.done()
        # In process a /health round trip never suspends; a socket would. Let the loop turn.
        await asyncio.sleep(0.001)
    # Read to the end: refused for its property, after every item was validated.
    assert_refused(big.result(), 422, "unknown_property", "no_such_property")
    # Validated on the loop: only the /health calls before the body arrived (2 here; 57 off it).
    assert answered_meanwhile >= 10
