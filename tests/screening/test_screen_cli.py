"""``ibrnet screen`` as users run it: locally, on ``--dask local:2`` and on a scheduler address."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from app.screening import dask_runner
from tests.api.harness import oqmd_formulas, serve
from tests.screening.helpers import screen_settings

pytestmark = pytest.mark.slow


def ibrnet_screen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "screen", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_dask_local_cluster_gives_the_services_predictions(models_dir: Path, tmp_path: Path):
    formulas = [*oqmd_formulas(300, offset=1000), "Fe2Xx", "NaCl", "Li" * 1000]
    source = tmp_path / "candidates.parquet"
    pd.DataFrame({"formula": formulas}).to_parquet(source)
    out = tmp_path / "screened.csv"
    result = ibrnet_screen(
        "--input", str(source), "--out", str(out), "--models", str(models_dir),
        "--dask", "local:2", "--partition-size", "64", cwd=tmp_path,
    )  # fmt: skip
    assert "on 2 Dask worker(s)" in result.stderr
    table = read(out)
    # A formula over the length limit is echoed as its first characters, as the service does.
    echoed = [*formulas[:-1], "Li" * 128 + "…"]
    assert list(table["formula"]) == echoed and list(table["index"]) == list(range(len(formulas)))

    async with serve(screen_settings(models_dir, tmp_path)) as (_, client):
        response = await client.post("/predict/batch", json={"formulas": formulas})
    served = response.json()["results"]
    for (_, row), answer in zip(table.iterrows(), served, strict=True):
        assert row["formula"] == answer["formula"]
        if "error" in answer:
            assert row["error_code"] == answer["error"]["code"] and pd.isna(row["composition"])
            assert row["error_message"] == answer["error"]["message"]  # "formula is 2000 characters ..."
            continue
        assert row["composition"] == answer["composition"] and pd.isna(row["error_code"])
        for name, prediction in answer["predictions"].items():
            assert math.isclose(row[name], prediction["value"], rel_tol=1e-6, abs_tol=1e-7), (
                row["formula"],
                name,
            )
            if prediction["uncertainty"] is None:
                assert pd.isna(row[f"{name}_uncertainty"])
            else:
                assert math.isclose(
                    row[f"{name}_uncertainty"], prediction["uncertainty"], rel_tol=1e-6, abs_tol=1e-7
                )


def test_workers_enumerate_their_partitions_and_load_the_models_once(models_dir: Path, tmp_path: Path):
    from distributed import Client, LocalCluster

    common = ["--chemsys", "Li-Fe-P-O", "--max-atoms", "8", "--models", str(models_dir)]
    ranked = ["--sort-by", "band_gap", "--descending", "--top-k", "25", "--filter", "formation_enthalpy:-3:1"]
    ibrnet_screen(*common, "--out", str(tmp_path / "local.parquet"), cwd=tmp_path)
    ibrnet_screen(*common, *ranked, "--out", str(tmp_path / "local-top.csv"), cwd=tmp_path)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        on_dask = ["--dask", cluster.scheduler_address, "--partition-size", "40"]
        ibrnet_screen(*common, *on_dask, "--out", str(tmp_path / "dask.parquet"), cwd=tmp_path)
        ibrnet_screen(*common, *ranked, *on_dask, "--out", str(tmp_path / "dask-top.csv"), cwd=tmp_path)
        loads = client.run(dask_runner.model_loads)
    # 407 compositions in 11 partitions per run, 22 in all, on 2 workers: each opened its ONNX
    # Runtime sessions once and reused them for every later partition.
    assert set(loads.values()) == {1}, loads

    local, dask = read(tmp_path / "local.parquet"), read(tmp_path / "dask.parquet")
    assert len(local) == 407 and local["composition"].is_unique
    pd.testing.assert_frame_equal(local, dask)
    top_local, top_dask = read(tmp_path / "local-top.csv"), read(tmp_path / "dask-top.csv")
    assert len(top_local) == 25
    pd.testing.assert_frame_equal(top_local, top_dask)
    kept = local[(local["formation_enthalpy"] >= -3) & (local["formation_enthalpy"] <= 1)]
    expected = kept.sort_values(["band_gap", "index"], ascending=[False, True]).head(25)
    assert list(top_local["index"]) == list(expected["index"])


def test_bad_cli_input_exits_with_a_message(models_dir: Path, tmp_path: Path):
    run = [sys.executable, "-m", "app.cli", "screen", "--no-progress", "--models", str(models_dir)]
    cases = {
        ("--chemsys", "Li-Xx", "--out", "x.csv"): "unknown_element",
        ("--chemsys", "Li-O", "--out", "x.xlsx"): "neither .csv nor .parquet",
        ("--out", "x.csv"): "exactly one input",
        ("--chemsys", "Li-O", "--filter", "band_gap:a:b", "--out", "x.csv"): "bounds must be numbers",
    }
    for args, message in cases.items():
        result = subprocess.run([*run, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
