"""Distillation (``ibrnet train --teacher``) and prediction intervals, on a real 3-member ensemble of
iBRNets trained on real OQMD rows (tests/training/conftest.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.cli import main
from app.inference.manifest import ONNX_FILE, ModelManifest
from training import distill, intervals, onnx_model
from training.data import DataRequest, composition_key, load_dataset
from training.nets import StudentNet
from training.run_config import RunConfig


@pytest.fixture(scope="module")
def teacher(ensemble_members: list[Path], ensemble_folder: Path) -> Path:
    folder = ensemble_folder.parent / "teacher"
    args = ["export", *map(str, ensemble_members), "--out", str(folder), "--member-weights", "fitted"]
    assert main(args) == 0
    return folder


def student_args(teacher: Path, folder: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--data", str(folder), "--teacher", str(teacher), "--out", str(run),
            "--epochs", str(epochs), "--batch-size", "100", "--lr", "1e-4", "--threads", "1",
            "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def student_run(teacher: Path, ensemble_folder: Path) -> Path:
    run = ensemble_folder.parent / "student"
    assert main(student_args(teacher, ensemble_folder, run, 3)) == 0
    return run


@pytest.fixture(scope="module")
def student(student_run: Path, ensemble_folder: Path) -> Path:
    folder = ensemble_folder.parent / "student-model"
    assert main(["export", str(student_run), "--out", str(folder), "--weights", "fp16"]) == 0
    return folder


def test_the_student_starts_as_the_teachers_heaviest_member(teacher, ensemble_folder):
    dataset = load_dataset(DataRequest(str(ensemble_folder)))
    loaded = distill.load_teacher(teacher, dataset)
    heaviest = loaded.heaviest()
    assert loaded.weights[heaviest] == max(loaded.weights)
    _, net = distill.student_from_teacher(loaded, head_units=3)
    x = torch.from_numpy(dataset.splits["val"].x)
    with torch.no_grad():
        heads = net.eval().each_head(x)[:, :, 0]  # [k, n]
        expected = loaded.members[heaviest](x)[:, 0]
        served = net(x)
    assert heads.shape == (3, len(x))
    for head in heads:
        torch.testing.assert_close(head, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(served[:, 0], expected, atol=1e-5, rtol=0)  # weights sum to 1
    assert torch.all(served[:, 1] < 1e-5)  # identical heads: no spread yet


def test_the_transfer_set_holds_no_composition_of_an_evaluation_split(ensemble_folder, tmp_path):
    """A validation and a test composition written differently in train (Fe2O3 in val, Fe4O6 in
    train) are left out of the transfer set; the other train rows all stay."""
    folder = tmp_path / "leaky"
    shutil.copytree(ensemble_folder, folder)
    train = pd.read_csv(folder / "train.csv")
    doubled = []
    for split in ("val", "test"):
        row = pd.read_csv(folder / f"{split}.csv").iloc[[0]].copy()
        key = composition_key(row["formula"].iloc[0])
        row["formula"] = "(" + row["formula"].iloc[0] + ")2"  # the same composition, another string
        assert composition_key(row["formula"].iloc[0]) == key
        doubled.append(row)
    pd.concat([train, *doubled]).to_csv(folder / "train.csv", index=False)
    dataset = load_dataset(DataRequest(str(folder)))
    transfer = distill.transfer_split(dataset)
    forbidden = distill.forbidden_compositions(dataset)
    kept = {composition_key(f) for f in transfer.formulas}
    assert not kept & forbidden
    removed = len(dataset.splits["train"].formulas) - len(transfer.formulas)
    originally_leaky = sum(composition_key(f) in forbidden for f in train["formula"])
    assert removed == 2 + originally_leaky
    assert transfer.skipped["evaluation_composition"] == removed
    assert len(transfer.x) == len(transfer.y) == len(transfer.formulas)


def test_a_teacher_made_from_other_data_is_refused(teacher, small_folder, tmp_path):
    with pytest.raises(SystemExit, match="other data files"):
        main(
            [
                "train",
                "--data",
                str(small_folder),
                "--teacher",
                str(teacher),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                "--no-progress",
            ]
        )


def test_a_distilled_student_is_one_network_served_with_sigma_and_interval(
    student, student_run, teacher, ensemble_folder, capsys
):
    config = RunConfig.load(student_run)
    assert config.train.teacher == str(teacher)
    assert config.net.heads == 3
    manifest, teacher_manifest = ModelManifest.load(student), ModelManifest.load(teacher)
    assert manifest.output.kind == "ensemble" and manifest.output.members == 3
    assert manifest.output.member_weights_fit == "teacher"
    assert manifest.output.member_weights == teacher_manifest.output.member_weights
    assert "distilled from teacher" in manifest.description
    # the teacher stays on record with the validation MAE the shipping rule compares with
    record = manifest.training.distilled_from
    assert record["version"] == teacher_manifest.version
    assert record["metrics_val_mae"] == teacher_manifest.metrics["val"].mae
    # one trunk: fewer parameters than the teacher's three networks, about one network's
    assert manifest.architecture.parameters < 0.5 * teacher_manifest.architecture.parameters
    dataset = load_dataset(DataRequest(str(ensemble_folder)), splits=("val", "test"))
    y = onnx_model.predict(onnx_model.session(student / ONNX_FILE), dataset.splits["test"].x)
    assert y.shape == (len(dataset.splits["test"].y), 2) and np.all(y[:, 1] >= 0)
    interval = manifest.output.interval
    assert interval is not None and interval.level == 0.9 and interval.scale > 0
    # the conformal guarantee on the rows it was fitted on: at least 90% of validation inside
    assert manifest.metrics["val"].interval_coverage >= 0.9
    capsys.readouterr()
    assert main(["evaluate", str(student), "--data", str(ensemble_folder), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    for key in ("mae", "within_1_sigma", "sigma_error_spearman", "interval_coverage"):
        assert scored[key] == getattr(manifest.metrics["test"], key)  # evaluate reproduces export
    inside = np.abs(y[:, 0].astype(np.float64) - dataset.splits["test"].y) <= interval.scale * y[:, 1]
    assert scored["interval_coverage"] == pytest.approx(inside.mean())


def test_a_resumed_student_rebuilds_the_same_network(student_run, teacher, ensemble_folder):
    assert main(student_args(teacher, ensemble_folder, student_run, 4, "--resume")) == 0
    config = RunConfig.load(student_run)
    assert config.result.epochs_completed == 4 and config.net.heads == 3
    from training.run_dir import load_best_model

    assert isinstance(load_best_model(student_run)[1], StudentNet)


def test_calibrate_interval_adds_an_interval_to_a_shipped_ensemble(
    teacher, ensemble_folder, tmp_path, capsys
):
    folder = tmp_path / "teacher"
    shutil.copytree(teacher, folder)
    manifest = ModelManifest.load(folder)
    manifest.output.interval = None
    manifest.save(folder)
    capsys.readouterr()
    assert main(["calibrate-interval", str(folder), "--data", str(ensemble_folder)]) == 0
    assert "90% interval" in capsys.readouterr().out
    updated = ModelManifest.load(folder)
    assert updated.output.interval is not None
    assert updated.onnx_sha256 == manifest.onnx_sha256  # the model (and its version) is unchanged
    assert updated.metrics["val"].interval_coverage >= 0.9
    assert updated.output.interval == ModelManifest.load(teacher).output.interval  # export fits the same


def test_calibrate_interval_refuses_other_data(teacher, small_folder):
    with pytest.raises(SystemExit, match="not the data"):
        main(["calibrate-interval", str(teacher), "--data", str(small_folder)])


def test_the_conformal_scale_is_the_finite_sample_quantile():
    sigma = np.ones(19)
    target = np.arange(1, 20, dtype=np.float64)  # scores 1..19
    scale, rows = intervals.conformal_scale(target, np.zeros(19), sigma, 0.9)
    assert rows == 19 and scale == 18.0  # ceil(20 * 0.9) = 18th smallest
    scale, rows = intervals.conformal_scale(target, np.zeros(19), np.r_[np.zeros(9), np.ones(10)], 0.9)
    assert rows == 10 and scale == 19.0  # rows with sigma 0 say nothing about the scale
    with pytest.raises(ValueError):
        intervals.conformal_scale(target, np.zeros(19), np.zeros(19))


def test_an_interval_never_reaches_below_the_propertys_floor():
    from app.inference.manifest import IntervalCalibration

    calibration = IntervalCalibration(level=0.9, scale=2.0)
    assert calibration.bounds(0.1, 0.2, 0.0) == (0.0, 0.5)
    low, high = calibration.bounds(0.1, 0.2, None)
    assert math.isclose(low, -0.3) and math.isclose(high, 0.5)


def test_neighbouring_compositions_are_in_no_split_and_have_no_target(ensemble_folder):
    """--transfer-extra: teacher-labelled compositions one atom away from train ones; never one of
    any split (train, validation or test), never twice, and without a true value."""
    dataset = load_dataset(DataRequest(str(ensemble_folder)))
    featurizer = get_featurizer(dataset.features)
    transfer = distill.transfer_split(dataset, featurizer, extra=1.0, seed=0)
    train = dataset.splits["train"]
    added = len(transfer.y) - len(train.y)
    assert added > 0.8 * len(train.y)
    extra_keys = [composition_key(f) for f in transfer.formulas[len(train.y) :]]
    every_split = {composition_key(f) for split in dataset.splits.values() for f in split.formulas}
    assert not set(extra_keys) & every_split
    assert len(set(extra_keys)) == added
    assert np.isnan(transfer.y[len(train.y) :]).all() and np.isfinite(transfer.y[: len(train.y)]).all()
    np.testing.assert_array_equal(transfer.x[len(train.y) :], featurizer.transform(
        [parse_formula(f) for f in transfer.formulas[len(train.y) :]]))  # fmt: skip


def test_the_spread_term_pulls_the_heads_apart_like_the_members():
    targets = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    objective = distill.DistillationObjective(targets, spread_weight=1.0)
    heads = torch.zeros(2, 2, requires_grad=True)  # identical heads: no spread yet

    class Weights(torch.nn.Module):
        member_weights = torch.full((2, 1, 1), 0.5)

    loss = objective.loss(heads, torch.tensor([0.5, 2.0]), torch.tensor([0, 1]), Weights())
    loss.backward()
    assert torch.isfinite(heads.grad).all()
    without = distill.DistillationObjective(targets, spread_weight=0.0)
    assert (
        float(without.loss(heads.detach(), torch.tensor([0.5, 2.0]), torch.tensor([0, 1]), Weights()))
        < loss.item()
    )


def test_heads_grown_on_one_network_serve_an_uncertainty(ensemble_members, ensemble_folder, tmp_path):
    """A property served by one network (band gap) gets heads trained on the target from the
    network's own trunk: one network still, now with sigma and an interval."""
    point = tmp_path / "point"
    assert main(["export", str(ensemble_members[0]), "--out", str(point)]) == 0
    run, model = tmp_path / "heads", tmp_path / "heads-model"
    args = ["train", "--data", str(ensemble_folder), "--init-from", str(point), "--heads", "3",
            "--out", str(run), "--epochs", "2", "--batch-size", "100", "--lr", "1e-4", "--threads", "1",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main(["export", str(run), "--out", str(model)]) == 0
    manifest = ModelManifest.load(model)
    assert manifest.output.kind == "ensemble" and manifest.output.members == 3
    assert manifest.output.member_weights == [pytest.approx(1 / 3, abs=1e-6)] * 3
    assert manifest.output.interval is not None and manifest.metrics["test"].interval_coverage is not None
    y = onnx_model.predict(onnx_model.session(model / ONNX_FILE), load_dataset(
        DataRequest(str(ensemble_folder)), splits=("test",)).splits["test"].x)  # fmt: skip
    assert (y[:, 1] > 0).mean() > 0.9  # the heads disagree: an uncertainty on (nearly) every row
