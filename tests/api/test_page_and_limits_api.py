"""GET /limits, and the page's files as the app serves them (the page itself: tests/web)."""

from __future__ import annotations

import re

import pytest

from app.web import plotly_js_path
from tests.api.harness import make_settings, serve

pytestmark = pytest.mark.anyio


async def test_limits_are_the_deployments_own_settings(models_dir, sqlite_url):
    settings = make_settings(models_dir, sqlite_url, max_batch_items=123, max_body_bytes=4096)
    async with serve(settings) as (_, client):
        body = (await client.get("/limits")).json()
    assert body["max_batch_items"] == 123 and body["max_body_bytes"] == 4096
    assert body["max_formula_length"] == settings.max_formula_length
    assert body["screen_max_compositions"] == settings.screen_max_compositions
    assert body["screen_max_atoms"] >= 1


async def test_the_page_and_every_asset_it_names_are_served_locally(client):
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert "/vendor/plotly.min.js" in assets and "/static/page.js" in assets
    for asset in assets:
        assert asset.startswith("/") or asset.startswith("data:"), f"{asset} is not served by the app"
        if asset.startswith("/") and asset not in {"/docs", "/models"}:
            response = await client.get(asset)
            assert response.status_code == 200, asset
    # The page's modules import one another by relative path; each of those is served too.
    for module in ("page.js", "api.js", "render.js", "table.js", "plots.js"):
        source = (await client.get(f"/static/{module}")).text
        for imported in re.findall(r'from "\./([\w.]+)"', source):
            assert (await client.get(f"/static/{imported}")).status_code == 200, imported
    plotly = await client.get("/vendor/plotly.min.js")
    assert plotly.content == plotly_js_path().read_bytes()
    assert plotly.headers["content-type"].startswith("text/javascript")


async def test_the_page_is_not_in_the_api_schema(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and "/vendor/plotly.min.js" not in paths and "/limits" in paths


@pytest.mark.parametrize("path", ["/static/page.js", "/vendor/plotly.min.js"])
async def test_a_bad_range_on_a_file_gets_a_json_error_and_a_good_one_its_bytes(client, path):
    whole = (await client.get(path)).content
    part = await client.get(path, headers={"range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]

    malformed = await client.get(path, headers={"range": "pages=1-2"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_range"
    assert malformed.json()["error"]["header"] == "range"

    past_the_end = await client.get(path, headers={"range": f"bytes={len(whole) + 10}-"})
    assert past_the_end.status_code == 416
    error = past_the_end.json()["error"]
    assert error["code"] == "range_not_satisfiable" and str(len(whole)) in error["message"]
    assert past_the_end.headers["content-range"] == f"bytes */{len(whole)}"
    # HEAD asks the same question and gets the same status, without the body.
    head = await client.head(path, headers={"range": "pages=1-2"})
    assert head.status_code == 400 and head.content == b""
