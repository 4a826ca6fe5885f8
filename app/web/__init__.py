"""The page at ``/``: one formula, a list, or a screen, in a browser, with no internet and no build.

Everything the page loads is served by this app: its own files from ``app/web/static`` and
plotly.js from the ``plotly`` wheel (pymatgen's dependency), so it works on an air-gapped cluster
exactly as on a laptop. The page talks to the same JSON API as every other client.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = "/static"
PLOTLY_URL = "/vendor/plotly.min.js"


def plotly_js_path() -> Path:
    """plotly.min.js as shipped inside the plotly Python package (no CDN)."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def install_page(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=STATIC_DIR), name="page-assets")
    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    plotly_js = plotly_js_path()

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get(PLOTLY_URL, include_in_schema=False)
    async def plotly() -> FileResponse:
        # The file changes only with the installed plotly version: let browsers keep it a day.
        return FileResponse(
            plotly_js, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )
