"""A real ``ibrnet serve`` and Debian's Chromium driven by Playwright, for the page's tests.

Chromium comes from Debian's package (scripts/install-chromium.sh, run by `make test` as root or
in CI); Playwright's own browser download is never used. Without Chromium these tests skip,
except under CI=true, where a missing browser is a failure: CI must prove the page works.

Every page is fenced in: a request to any host but the test server is aborted and recorded, and
each test fails if one was made (the page must work with no internet). Screenshots go to
IBRNET_SCREENSHOTS_DIR (default: <tmp>/ibrnet-screenshots), printed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.inference.manifest import ModelManifest
from tests.api.harness import oqmd_formulas
from tests.model_factory import write_paper_reference
from tests.server_process import ibrnet_serve
from training.domain import training_domain

CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, Chromium calls home at start: refused on a closed network, many at a time.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BAND_GAP_MODEL = "oqmd-band-gap"
# The screen tests need to see a job while it runs: small chunks with a pause between them.
SLOW_SCREENS = {"IBRNET_SCREEN_CHUNK_SIZE": "8", "IBRNET_SCREEN_CHUNK_PAUSE_MS": "400"}


def chromium_path() -> str:
    path = os.environ.get("IBRNET_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but Chromium is missing at {path}: scripts/install-chromium.sh installs it")
        pytest.skip(f"Chromium not found at {path} (scripts/install-chromium.sh installs it, as root)")
    return path


@pytest.fixture(scope="session")
def screenshots_dir() -> Iterator[Path]:
    default = Path(tempfile.gettempdir()) / "ibrnet-screenshots"
    folder = Path(os.environ.get("IBRNET_SCREENSHOTS_DIR") or default)
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    saved = sorted(path.name for path in folder.glob("*.png"))
    print(f"\npage screenshots in {folder}: {', '.join(saved)}")


@pytest.fixture(scope="module")
def server(mp_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The standard models plus a formation_energy_mp model and the paper Li-O hull reference, so
    the page shows e_above_hull and its fields as a deployment with stability does."""
    folder = tmp_path_factory.mktemp("web")
    env = {**SLOW_SCREENS, "IBRNET_HULL_REFERENCE": str(write_paper_reference(folder))}
    models = folder / "models"
    shutil.copytree(mp_models_dir, models)
    # The band-gap model records a training domain (real OQMD train compounds), as shipped ones do.
    manifest = ModelManifest.load(models / BAND_GAP_MODEL)
    manifest.domain = training_domain(oqmd_formulas(3000, split="train"))
    manifest.save(models / BAND_GAP_MODEL)
    with ibrnet_serve(models, f"sqlite:///{folder / 'ibrnet.db'}", folder, env=env) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, server: str) -> Iterator[object]:
    """A fresh page on the server's ``/``, loaded, with outside requests aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)  # type: ignore[attr-defined]
    outside: list[str] = []
    page_errors: list[str] = []

    def fence(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(server) or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", fence)
    tab = context.new_page()
    tab.on("pageerror", lambda error: page_errors.append(str(error)))
    # A generous first load: a fresh browser on a busy 2-CPU machine once took over 30 s (the
    # default) to load the page and its plotting library (megabytes); what is tested comes after.
    tab.goto(f"{server}/", timeout=120_000)
    # Ready once the served properties are listed (GET /models answered).
    tab.wait_for_selector("#single-form [data-role=properties] input[type=checkbox]")
    yield tab
    context.close()
    assert outside == [], f"the page reached outside the service: {outside}"
    assert page_errors == [], f"uncaught errors in the page: {page_errors}"
