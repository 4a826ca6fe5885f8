"""The page against a service that requires API keys: it asks for one, once, and sends it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import ibrnet_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyed_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("web-keys")
    env = {"IBRNET_API_KEYS": "lab-key"}
    with ibrnet_serve(models_dir, f"sqlite:///{folder / 'ibrnet.db'}", folder, env=env) as (base, _):
        yield base


def test_the_page_asks_for_the_key_once_and_then_predicts(browser, keyed_server, screenshots_dir):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{keyed_server}/")  # the page itself is public
        dialog = page.wait_for_selector("#key-dialog[open]")
        assert dialog.is_visible()
        page.screenshot(path=screenshots_dir / "api-key.png")
        page.fill("#key-input", "lab-key")
        page.press("#key-input", "Enter")
        page.wait_for_selector("#single-form [data-role=properties] input[type=checkbox]")
        page.fill("#single-formula", "Fe2O3")
        page.press("#single-formula", "Enter")
        page.wait_for_selector("#single-result [data-role=composition]")
        assert page.query_selector("#key-dialog[open]") is None  # asked once: /limits used the key too
        assert page.inner_text("#notices") == ""
    finally:
        context.close()
