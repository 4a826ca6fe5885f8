"""Shared fixtures: real formulas and targets from the packaged OQMD files (no synthetic data)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from app.cli import main
from training.data import ensure_wheel
from training.datasets import PACKAGED

FORMATION = PACKAGED["oqmd-formation-enthalpy"]
BANDGAP = PACKAGED["oqmd-bandgap"]
ENSEMBLE_SEEDS = ("0", "1", "2")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """CI machines are small and shared: two spinning OpenMP threads on a busy core run ~10x slower."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_data_cache(tmp_path_factory) -> Iterator[Path]:
    """Tests write their feature caches to a temporary folder; the wheel is the user's (linked)."""
    wheel = ensure_wheel()
    folder = tmp_path_factory.mktemp("ibrnet-cache")
    (folder / wheel.name).symlink_to(wheel)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IBRNET_DATA_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def oqmd_frames() -> dict[str, pd.DataFrame]:
    """The packaged formation-enthalpy splits as read straight from the wheel."""
    with zipfile.ZipFile(ensure_wheel()) as archive:
        return {
            split: pd.read_csv(io.BytesIO(archive.read(f"{FORMATION.member}/{split}.csv")))
            for split in ("train", "val", "test")
        }


@pytest.fixture
def small_folder(tmp_path: Path, oqmd_frames: dict[str, pd.DataFrame]) -> Path:
    """A train/val/test folder of real rows (300/100/100), the shape users bring their own data in."""
    folder = tmp_path / "small"
    folder.mkdir()
    for split, rows in (("train", 300), ("val", 100), ("test", 100)):
        oqmd_frames[split].head(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture
def bandgap_folder(tmp_path: Path) -> Path:
    """Real OQMD band gaps (300/100/100 rows): most are exactly 0, as in the whole dataset."""
    folder = tmp_path / "bandgap"
    folder.mkdir()
    with zipfile.ZipFile(ensure_wheel()) as archive:
        for split, rows in (("train", 300), ("val", 100), ("test", 100)):
            frame = pd.read_csv(io.BytesIO(archive.read(f"{BANDGAP.member}/{split}.csv")), nrows=rows)
            frame.to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def ensemble_folder(tmp_path_factory, oqmd_frames: dict[str, pd.DataFrame]) -> Path:
    """Real OQMD rows (400/200/200): enough test rows for the shares to mean something."""
    path = tmp_path_factory.mktemp("calibration") / "data"
    path.mkdir()
    for split, rows in (("train", 400), ("val", 200), ("test", 200)):
        oqmd_frames[split].head(rows).to_csv(path / f"{split}.csv", index=False)
    return path


@pytest.fixture(scope="session")
def ensemble_members(ensemble_folder: Path) -> list[Path]:
    """Three seeded iBRNets trained for 3 epochs on ensemble_folder: shared by the ensemble tests."""
    runs = []
    for seed in ENSEMBLE_SEEDS:
        run = ensemble_folder.parent / f"member{seed}"
        args = ["train", "--data", str(ensemble_folder), "--out", str(run), "--epochs", "3",
                "--batch-size", "100", "--lr", "1e-3", "--seed", seed, "--threads", "1",
                "--no-progress"]  # fmt: skip
        assert main(args) == 0
        runs.append(run)
    return runs
