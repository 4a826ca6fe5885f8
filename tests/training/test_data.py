from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from training.data import WHEEL_SHA256, DataRequest, ensure_wheel, load_dataset
from training.datasets import PACKAGED, find_packaged


def test_wheel_is_the_published_one():
    assert hashlib.sha256(ensure_wheel().read_bytes()).hexdigest() == WHEEL_SHA256


@pytest.mark.parametrize(
    ("name", "expected", "prop", "unit"),
    [
        ("oqmd-formation-enthalpy", "oqmd-formation-enthalpy", "formation_enthalpy", "eV/atom"),
        ("OQMD_Formation_Enthalpy", "oqmd-formation-enthalpy", "formation_enthalpy", "eV/atom"),
        ("OQMD_Bandgap", "oqmd-bandgap", "band_gap", "eV"),
        ("oqmd-volume-per-atom", "oqmd-volume-per-atom", "volume_per_atom", "Å³/atom"),
        ("OQMD_Energy_per_atom", "oqmd-energy-per-atom", "energy_per_atom", "eV/atom"),
    ],
)
def test_packaged_names_and_folder_names_resolve(name, expected, prop, unit):
    dataset = find_packaged(name)
    assert dataset is not None
    assert (dataset.name, dataset.property, dataset.unit) == (expected, prop, unit)
    assert any("OQMD" in c for c in dataset.citations)
    assert any("Wang" in c and "Sparks" in c for c in dataset.citations)  # the CrabNet authors


def test_unknown_name_says_what_exists():
    with pytest.raises(FileNotFoundError, match="oqmd-formation-enthalpy"):
        load_dataset(DataRequest("oqmd-no-such-thing"))


def test_limited_packaged_load_records_files_and_uses_real_rows(oqmd_frames):
    dataset = load_dataset(DataRequest("OQMD_Formation_Enthalpy", limit=500))
    info = dataset.info()
    assert info["name"] == "oqmd-formation-enthalpy"
    assert info["sizes"] == {"train": 500, "val": 500, "test": 500}
    assert info["rows_in_file"] == {"train": 239_190, "val": 51_255, "test": 51_255}
    with zipfile.ZipFile(ensure_wheel()) as archive:
        for split in ("train", "val", "test"):
            data = archive.read(f"{PACKAGED['oqmd-formation-enthalpy'].member}/{split}.csv")
            assert info["sha256"][split] == hashlib.sha256(data).hexdigest()
            assert info["file_sizes"][split] == len(data)
    train = dataset.splits["train"]
    frame = oqmd_frames["train"].set_index("formula")
    np.testing.assert_allclose(train.y, frame.loc[train.formulas, "target"].to_numpy(), rtol=1e-6)
    # the same seed picks the same subset
    again = load_dataset(DataRequest("oqmd-formation-enthalpy", limit=500))
    assert again.splits["test"].formulas == dataset.splits["test"].formulas


def test_training_features_equal_the_serving_path():
    """The vector a model trains on is the vector the service computes for the same formula."""
    featurizer = get_featurizer("ef")
    dataset = load_dataset(DataRequest("oqmd-formation-enthalpy", limit=300))
    for split in dataset.splits.values():
        served = featurizer.transform(
            [parse_formula(f, allowed_elements=featurizer.elements) for f in split.formulas]
        )
        assert served.dtype == split.x.dtype == np.float32
        assert np.array_equal(served, split.x)


def test_csv_with_bad_rows_reports_each_by_code(tmp_path, oqmd_frames):
    good = oqmd_frames["test"].head(200)
    bad = pd.DataFrame(
        {
            "formula": ["", "He2O", "Xx2O3", "Fe2O3((", "NaCl", "Fe0O", "LiFePO4"],
            "target": ["1.0", "0.5", "0.1", "0.2", "n/a", "0.3", "-1.5"],
        }
    )
    path = tmp_path / "mixed.csv"
    pd.concat([good.astype({"target": str}), bad]).to_csv(path, index=False)
    dataset = load_dataset(DataRequest(str(path), outlier_iqr=None))
    used = sum(len(split.y) for split in dataset.splits.values())
    skipped: dict[str, int] = {}
    for split in dataset.splits.values():
        for code, count in split.skipped.items():
            skipped[code] = skipped.get(code, 0) + count
    assert used + sum(skipped.values()) == 207
    assert used == 201  # the 200 real rows and LiFePO4
    assert skipped["empty_formula"] == 1
    assert skipped["unsupported_element"] == 1  # He: a real element outside the EF set
    assert skipped["unknown_element"] == 1
    assert skipped["invalid_target"] == 1
    assert skipped["invalid_amount"] == 1  # Fe0O: pymatgen would silently make it O
    info = dataset.info()
    assert sum(info["skipped_rows"].values()) == 6
    assert "seeded 80/10/10" in info["split"]
    assert {k: len(s.y) + sum(s.skipped.values()) for k, s in dataset.splits.items()} == {
        "train": 166,  # round(0.8 * 207)
        "val": 21,
        "test": 20,
    }


def test_single_csv_features_are_cached_once(tmp_path, oqmd_frames, monkeypatch):
    monkeypatch.setenv("IBRNET_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "one.csv"
    oqmd_frames["val"].head(120).to_csv(path, index=False)
    first = load_dataset(DataRequest(str(path)))
    (entry,) = (tmp_path / "cache" / "features").glob("*.npz")  # the file, not each split
    # an entry left by older chemistry code for the same file goes when a new one is written
    stale = entry.with_name(entry.name.rsplit("-", 1)[0] + "-000000000000.npz")
    entry.rename(stale)
    load_dataset(DataRequest(str(path)))
    assert [p.name for p in (tmp_path / "cache" / "features").glob("*.npz")] == [entry.name]
    second = load_dataset(DataRequest(str(path)))
    for split in first.splits:
        assert np.array_equal(first.splits[split].x, second.splits[split].x)


def test_csv_split_is_seeded_and_recorded(tmp_path, oqmd_frames):
    path = tmp_path / "plain.csv"
    oqmd_frames["val"].head(100).rename(columns={"target": "dH"}).to_csv(path, index=False)
    first = load_dataset(DataRequest(str(path), target_column="dH", unit="eV/atom"))
    second = load_dataset(DataRequest(str(path), target_column="dH", unit="eV/atom"))
    other = load_dataset(DataRequest(str(path), target_column="dH", split_seed=1))
    assert first.splits["test"].formulas == second.splits["test"].formulas
    assert first.splits["test"].formulas != other.splits["test"].formulas
    assert first.property == "dh" and first.unit == "eV/atom"
    assert first.info()["split_seed"] == 0


def test_folder_dataset_and_train_only_outlier_filter(small_folder):
    train = pd.read_csv(small_folder / "train.csv")
    train.loc[0, "target"] = -198.7  # the kind of outlier the OQMD train file holds
    train.to_csv(small_folder / "train.csv", index=False)
    val = pd.read_csv(small_folder / "val.csv")
    val.loc[0, "target"] = 43.5
    val.to_csv(small_folder / "val.csv", index=False)
    dataset = load_dataset(DataRequest(str(small_folder)))
    assert dataset.splits["train"].outliers_dropped == 1
    assert len(dataset.splits["train"].y) == 299
    assert len(dataset.splits["val"].y) == 100  # val and test are never filtered
    assert dataset.splits["val"].y.max() == pytest.approx(43.5)
    kept = load_dataset(DataRequest(str(small_folder), outlier_iqr=None))
    assert len(kept.splits["train"].y) == 300


def test_outlier_filter_is_not_applied_when_the_interquartile_range_is_zero(bandgap_folder):
    targets = pd.read_csv(bandgap_folder / "train.csv")["target"]
    assert targets.quantile(0.75) == 0 and (targets > 0).sum() >= 5  # metals dominate, a few insulators
    dataset = load_dataset(DataRequest(str(bandgap_folder)))
    train = dataset.splits["train"]
    assert train.outliers_dropped == 0 and len(train.y) == 300  # every insulator kept
    assert "interquartile range is 0" in dataset.info()["train_target_window"]


def test_feature_cache_round_trips(tmp_path, small_folder, monkeypatch):
    monkeypatch.setenv("IBRNET_DATA_DIR", str(tmp_path / "cache"))
    first = load_dataset(DataRequest(str(small_folder)))
    cached = list((tmp_path / "cache" / "features").glob("*.npz"))
    assert len(cached) == 3  # one per file
    second = load_dataset(DataRequest(str(small_folder)))
    for split in first.splits:
        assert np.array_equal(first.splits[split].x, second.splits[split].x)
        assert first.splits[split].formulas == second.splits[split].formulas
    # a limited load reads the subset out of the whole-file cache: same rows as parsing them afresh
    limited = load_dataset(DataRequest(str(small_folder), limit=50))
    monkeypatch.setenv("IBRNET_DATA_DIR", str(tmp_path / "empty"))
    fresh = load_dataset(DataRequest(str(small_folder), limit=50))
    assert limited.splits["train"].formulas == fresh.splits["train"].formulas
    assert np.array_equal(limited.splits["train"].x, fresh.splits["train"].x)


def test_missing_split_file_is_named(tmp_path: Path, small_folder):
    (small_folder / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.csv"):
        load_dataset(DataRequest(str(small_folder)))


def test_parsed_rows_keep_their_file_order(oqmd_frames):
    dataset = load_dataset(DataRequest("oqmd-formation-enthalpy", limit=200))
    order = {f: i for i, f in enumerate(oqmd_frames["val"]["formula"])}
    positions = [order[f] for f in dataset.splits["val"].formulas]
    assert positions == sorted(positions)


def _doubled(formula: str) -> str:
    """The same composition written differently (every amount twice): Fe2O3 -> Fe4O6."""
    return "".join(
        f"{element}{2 * amount:g}" for element, amount in parse_formula(formula).amount_dict.items()
    )


def test_excluded_compositions_leave_train_and_val_but_never_test(small_folder, tmp_path):
    train = pd.read_csv(small_folder / "train.csv")
    val = pd.read_csv(small_folder / "val.csv")
    test = pd.read_csv(small_folder / "test.csv")
    other = tmp_path / "other"
    other.mkdir()
    # The other dataset's test split holds 5 train and 3 val compositions of this one (written
    # differently), and 2 of its test compositions; its own train split holds 4 more train ones.
    pd.DataFrame(
        {"formula": [*map(_doubled, train.formula[:5]), *map(_doubled, val.formula[:3]), *test.formula[:2]],
         "target": 0.0}
    ).to_csv(other / "test.csv", index=False)  # fmt: skip
    pd.DataFrame({"formula": train.formula[10:14], "target": 0.0}).to_csv(other / "train.csv", index=False)
    pd.DataFrame({"formula": ["NaCl"], "target": 0.0}).to_csv(other / "val.csv", index=False)

    plain = load_dataset(DataRequest(str(small_folder), outlier_iqr=None))
    held_out = load_dataset(DataRequest(str(small_folder), outlier_iqr=None, exclude=(f"{other}:test",)))
    assert held_out.notes["excluded_rows"] == {"train": 5, "val": 3}
    assert len(held_out.splits["train"].y) == len(plain.splits["train"].y) - 5
    assert len(held_out.splits["test"].y) == len(plain.splits["test"].y)  # test is never touched
    keys = {parse_formula(f).canonical_key for f in held_out.splits["train"].formulas}
    assert not keys & {parse_formula(f).canonical_key for f in train.formula[:5]}
    everything = load_dataset(DataRequest(str(small_folder), outlier_iqr=None, exclude=(str(other),)))
    assert everything.notes["excluded_rows"]["train"] == 9  # all splits of the other dataset
    with pytest.raises(SystemExit, match="no split tset"):
        load_dataset(DataRequest(str(small_folder), exclude=(f"{other}:tset",)))
