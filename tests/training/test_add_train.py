"""``--add-train``: rows of another dataset join the train split, never an evaluation composition."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.chemistry.formula import parse_formula
from training.data import DataRequest, describe, ensure_wheel, load_dataset
from training.datasets import PACKAGED


def _doubled(formula: str) -> str:
    """The same composition written differently (every amount twice): Fe2O3 -> Fe4O6."""
    return "".join(
        f"{element}{2 * amount:g}" for element, amount in parse_formula(formula).amount_dict.items()
    )


def _key(formula: str) -> str:
    return parse_formula(formula).canonical_key


def _write_folder(folder: Path, splits: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir()
    for split, frame in splits.items():
        frame.to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture
def other_folder(tmp_path, small_folder, oqmd_frames) -> Path:
    """Another dataset of the same property, in every split of its own: 4 of this dataset's train
    compositions, 3 of its val and 2 of its test ones (all written differently, other targets), 20
    compositions this dataset lacks (real OQMD rows it does not hold), one of them twice (a
    polymorph, 0.5 eV/atom higher) and one a third time (0.3 lower), a formula no parser takes, and
    a composition of none of those whose target (50 eV/atom) no outlier window keeps."""
    mine = {split: pd.read_csv(small_folder / f"{split}.csv") for split in ("train", "val", "test")}
    new = oqmd_frames["train"].iloc[1000:1020].reset_index(drop=True)
    polymorphs = pd.DataFrame(
        {"formula": [_doubled(new.formula[0]), new.formula[0]],
         "target": [new.target[0] + 0.5, new.target[0] - 0.3]}
    )  # fmt: skip
    seen = pd.DataFrame(
        {"formula": [*map(_doubled, mine["train"].formula[:4]), *map(_doubled, mine["val"].formula[:3]),
                     *map(_doubled, mine["test"].formula[:2]), "Fe2Q3"],
         "target": 9.0}
    )  # fmt: skip
    return _write_folder(
        tmp_path / "other",
        {
            "train": pd.concat(
                [new[:12], polymorphs[:1], pd.DataFrame({"formula": ["Zr3Ru2Sc"], "target": [50.0]})]
            ),
            "val": seen,
            "test": pd.concat([new[12:], polymorphs[1:]]),
        },
    )


def test_added_rows_never_bring_a_composition_this_dataset_has(small_folder, other_folder, oqmd_frames):
    plain = load_dataset(DataRequest(str(small_folder), outlier_iqr=None))
    request = DataRequest(str(small_folder), outlier_iqr=None, add_train=(str(other_folder),))
    grown = load_dataset(request)
    train = grown.splits["train"]
    assert len(train.y) == len(plain.splits["train"].y) + 21
    assert train.added_rows == 21
    counts = grown.notes["add_train"]["datasets"][str(other_folder)]
    assert {k: v for k, v in counts.items() if k not in ("source", "sha256")} == {
        "added": 21, "in_this_dataset": 9, "merged_duplicates": 2, "refused": 1,
    }  # fmt: skip
    evaluation = {_key(f) for split in ("val", "test") for f in grown.splits[split].formulas}
    train_keys = [_key(f) for f in train.formulas]
    assert not set(train_keys) & evaluation
    assert len(set(train_keys)) == len(train_keys)
    # this dataset's own train rows keep their labels (the other dataset said 9.0 for four of them)
    np.testing.assert_array_equal(train.y[: len(plain.splits["train"].y)], plain.splits["train"].y)
    assert 9.0 not in train.y.tolist()
    # validation and test are untouched
    for split in ("val", "test"):
        assert grown.splits[split].formulas == plain.splits[split].formulas
    # the polymorphs became one row: the lowest target (the ground state)
    first = oqmd_frames["train"].iloc[1000]
    lowest = train.y[train_keys.index(_key(first.formula))]
    assert lowest == pytest.approx(first.target - 0.3, abs=1e-5)
    # the request survives config.json (JSON has no tuples)
    assert DataRequest.from_dict(json.loads(json.dumps(asdict(request)))) == request


def test_the_outlier_window_is_this_datasets_and_drops_added_rows_too(small_folder, other_folder):
    plain = load_dataset(DataRequest(str(small_folder)))
    grown = load_dataset(DataRequest(str(small_folder), add_train=(str(other_folder),)))
    assert grown.notes["train_target_window"] == plain.notes["train_target_window"]
    assert grown.notes["add_train"]["outliers_dropped"] == 1  # the 50 eV/atom row
    own = len(plain.splits["train"].y)
    np.testing.assert_array_equal(grown.splits["train"].y[:own], plain.splits["train"].y)
    assert grown.splits["train"].added_rows == 20
    assert 50.0 not in grown.splits["train"].y.tolist()


def test_a_limited_load_still_keeps_out_every_composition_of_the_whole_dataset(small_folder, other_folder):
    limited = load_dataset(
        DataRequest(str(small_folder), outlier_iqr=None, limit=40, add_train=(str(other_folder),))
    )
    assert limited.splits["train"].added_rows == 21
    every = {
        _key(f)
        for split in ("train", "val", "test")
        for f in pd.read_csv(small_folder / f"{split}.csv").formula
    }
    added = limited.splits["train"].formulas[-21:]
    assert not {_key(f) for f in added} & every


def test_duplicates_may_be_averaged_and_excluded_compositions_never_come_in(
    small_folder, other_folder, oqmd_frames, tmp_path
):
    first = oqmd_frames["train"].iloc[1000]
    averaged = load_dataset(
        DataRequest(
            str(small_folder), outlier_iqr=None, add_train=(str(other_folder),), add_train_duplicates="mean"
        )
    )
    keys = [_key(f) for f in averaged.splits["train"].formulas]
    assert averaged.splits["train"].y[keys.index(_key(first.formula))] == pytest.approx(
        first.target + (0.0 + 0.5 - 0.3) / 3, abs=1e-5
    )
    banned = oqmd_frames["train"].iloc[1003:1008]
    elsewhere = _write_folder(
        tmp_path / "elsewhere",
        {split: banned.assign(formula=banned.formula.map(_doubled)) for split in ("train", "val", "test")},
    )
    held_out = load_dataset(
        DataRequest(
            str(small_folder),
            outlier_iqr=None,
            add_train=(str(other_folder),),
            exclude=(f"{elsewhere}:test",),
        )
    )
    assert held_out.notes["add_train"]["datasets"][str(other_folder)]["excluded"] == 5
    held_keys = {_key(f) for f in held_out.splits["train"].formulas}
    assert not held_keys & {_key(f) for f in banned.formula}
    with pytest.raises(SystemExit, match="--add-train-duplicates median"):
        load_dataset(
            DataRequest(str(small_folder), add_train=(str(other_folder),), add_train_duplicates="median")
        )


def test_a_packaged_dataset_brings_its_citations(tmp_path):
    with zipfile.ZipFile(ensure_wheel()) as archive:
        gaps = pd.read_csv(io.BytesIO(archive.read(PACKAGED["matbench-expt-gap"].member)))
    mine = _write_folder(
        tmp_path / "gaps", {"train": gaps[:200], "val": gaps[200:250], "test": gaps[250:300]}
    )
    request = DataRequest(
        str(mine),
        property="experimental_band_gap",
        unit="eV",
        outlier_iqr=None,
        add_train=("matbench-expt-gap",),
    )
    dataset = load_dataset(request)
    assert dataset.citations == list(PACKAGED["matbench-expt-gap"].citations)
    counts = dataset.notes["add_train"]["datasets"]["matbench-expt-gap"]
    assert counts["in_this_dataset"] >= 300
    assert dataset.splits["train"].added_rows == counts["added"] > 4000
    assert "(+" in describe(dataset) and "from --add-train)" in describe(dataset)


def test_a_packaged_dataset_of_another_property_is_refused_by_name(small_folder):
    request = DataRequest(
        str(small_folder), property="formation_enthalpy", unit="eV/atom", add_train=("oqmd-bandgap",)
    )
    with pytest.raises(SystemExit, match=r"--add-train oqmd-bandgap: its property is band_gap \(eV\)"):
        load_dataset(request)
    with pytest.raises(SystemExit, match="names a dataset twice"):
        load_dataset(DataRequest(str(small_folder), add_train=("oqmd-bandgap", "oqmd-bandgap")))
