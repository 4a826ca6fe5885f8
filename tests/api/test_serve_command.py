"""``ibrnet serve`` as users run it: a real uvicorn process, a real HTTP client, a restart."""

from __future__ import annotations

import httpx

from tests.server_process import ibrnet_serve


def test_serve_answers_and_remembers_across_a_restart(tmp_path, models_dir):
    database_url = f"sqlite:///{tmp_path / 'ibrnet.db'}"
    with ibrnet_serve(models_dir, database_url, tmp_path) as (base, _):
        first = httpx.post(f"{base}/predict", json={"formula": "Fe2O3"}, timeout=10)
        assert first.status_code == 200, first.text
        gap = first.json()["predictions"]["band_gap"]
        assert gap["unit"] == "eV" and isinstance(gap["value"], float) and gap["version"]
        assert gap["cached"] is False
        ready = httpx.get(f"{base}/ready", timeout=10).json()
        assert ready["status"] == "ready"
    with ibrnet_serve(models_dir, database_url, tmp_path) as (base, _):
        again = httpx.post(f"{base}/predict", json={"formula": "Fe2O3"}, timeout=10).json()
        assert again["predictions"]["band_gap"]["cached"] is True
        assert again["predictions"]["band_gap"]["value"] == gap["value"]
        assert again["predictions"]["band_gap"]["version"] == gap["version"]
