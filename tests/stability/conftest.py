"""A hand-made Li-O reference whose hull is known on paper, and a tiny real MP model beside the
standard models (tests/model_factory.py)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from tests.model_factory import write_model

# Li and O at 0 (implied), Li2O at -2.0 (x_O = 1/3), Li2O2 at -1.4 (x_O = 1/2). On paper the hull
# runs Li (0, 0) -> Li2O (1/3, -2.0) -> O (1, 0); at x_O = 1/2 it is -2.0 + (1/6)/(2/3) * 2 = -1.5,
# so Li2O2 lies 0.1 eV/atom above it and decomposes into 3/4 Li2O + 1/4 O2 (shares of atoms).
PAPER_REFERENCE = "formula,formation_energy\nLi2O,-2.0\nLi2O2,-1.4\nO,0\n"


@pytest.fixture
def paper_reference(tmp_path: Path) -> Path:
    path = tmp_path / "li-o.csv"
    path.write_text(PAPER_REFERENCE)
    return path


@pytest.fixture(scope="session")
def mp_models_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard models plus a tiny ensemble answering formation_energy_mp."""
    root = tmp_path_factory.mktemp("mp-models")
    for folder in models_dir.iterdir():
        shutil.copytree(folder, root / folder.name)
    write_model(
        root / "mp-formation-energy",
        property_name="formation_energy_mp",
        unit="eV/atom",
        seed=7,
        ensemble=True,
        salt=uuid.uuid4().hex,
    )
    return root
