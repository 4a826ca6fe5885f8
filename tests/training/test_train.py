from __future__ import annotations

import json
from dataclasses import asdict, fields

import numpy as np
import pytest
import torch

from app.cli import build_parser, main
from tests.training.run_helpers import read_log, train_run
from training import onnx_model
from training.data import DataRequest, load_dataset
from training.export import write_onnx
from training.metrics import regression_metrics
from training.run_config import RunConfig
from training.run_dir import BEST_FILE, CHECKPOINT_FILE, load_best_model
from training.train import EarlyStopping, TrainConfig, train


def test_run_directory_holds_everything_to_rebuild_the_model(small_folder, tmp_path):
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--epochs", "2") == 0
    for name in (
        "config.json",
        "log.csv",
        "checkpoint.pt",
        "best.pt",
        "learning_curve.png",
        "val_parity.png",
    ):
        assert (run / name).stat().st_size > 0, name
    config = json.loads((run / "config.json").read_text())
    assert config["parameters"] == 4_548_385
    assert config["features"]["spec"] == "ef" and config["features"]["width"] == 86
    assert config["dataset"]["sizes"] == {"train": 300, "val": 100, "test": 100}
    assert config["result"]["epochs_completed"] == 2
    assert config["command"].startswith("ibrnet train --data ")
    rows = read_log(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_mae", "val_mae", "lr", "seconds"}
    # the rebuilt best network scores the validation split exactly as training recorded it
    _, model = load_best_model(run)
    val = load_dataset(DataRequest.from_dict(config["data"])).splits["val"]
    with torch.no_grad():
        predicted = model(torch.from_numpy(val.x)).squeeze(1).numpy()
    best = min(rows, key=lambda r: float(r["val_mae"]))
    assert regression_metrics(val.y, predicted)["mae"] == pytest.approx(float(best["val_mae"]), rel=1e-6)
    assert config["result"]["best_epoch"] == int(best["epoch"])


def test_bf16_training_is_selected_and_scored_in_float32(small_folder, tmp_path):
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--epochs", "2", "--precision", "bf16") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    assert config["net"]["target_floor"] is None  # formation enthalpies are negative
    _, model = load_best_model(run)
    val = load_dataset(DataRequest.from_dict(config["data"])).splits["val"]
    with torch.no_grad():
        predicted = model(torch.from_numpy(val.x)).squeeze(1).numpy()
    # the recorded validation MAE is the float32 network's, the one that gets exported
    assert regression_metrics(val.y, predicted)["mae"] == pytest.approx(
        config["result"]["best_val_mae"], rel=1e-6
    )


def test_a_non_negative_property_is_never_predicted_below_zero(bandgap_folder, tmp_path):
    run = tmp_path / "run"
    assert train_run(bandgap_folder, run, "--epochs", "1", "--lr", "1e-2") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["net"]["target_floor"] == 0.0
    _, model = load_best_model(run)
    x = torch.from_numpy(load_dataset(DataRequest.from_dict(config["data"])).splits["test"].x)
    with torch.no_grad():
        model.train()  # training mode: the raw output, so a too-low prediction still has a gradient
        raw = model(x).squeeze(1)
        model.eval()
        served = model(x).squeeze(1)
    assert raw.min() < 0  # the untrained-enough network does go below zero ...
    assert served.min() >= 0 and torch.equal(served, raw.clamp_min(0))  # ... and is floored when served
    write_onnx(model, config["features"]["width"], tmp_path / "model.onnx")
    exported = onnx_model.predict(onnx_model.session(tmp_path / "model.onnx"), x.numpy())[:, 0]
    assert exported.min() >= 0 and np.allclose(exported, served.numpy(), atol=1e-5)


def test_resume_continues_exactly_where_it_stopped(small_folder, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_run(small_folder, straight, "--epochs", "3") == 0
    assert train_run(small_folder, split, "--epochs", "1") == 0
    assert train_run(small_folder, split, "--epochs", "3", "--resume") == 0
    a, b = read_log(straight), read_log(split)
    assert [(r["epoch"], r["train_mae"], r["val_mae"], r["lr"]) for r in a] == [
        (r["epoch"], r["train_mae"], r["val_mae"], r["lr"]) for r in b
    ]
    best_a = torch.load(straight / BEST_FILE, weights_only=True)["model"]
    best_b = torch.load(split / BEST_FILE, weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    config = json.loads((split / "config.json").read_text())
    assert len(config["resumed"]) == 1


def test_an_existing_run_is_not_overwritten(small_folder, tmp_path):
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--epochs", "1") == 0
    with pytest.raises(SystemExit, match="--resume"):
        train_run(small_folder, run, "--epochs", "1")
    with pytest.raises(SystemExit, match="different"):
        train_run(small_folder, run, "--epochs", "2", "--resume", "--seed", "5")


def test_time_limit_stops_cleanly(small_folder, tmp_path):
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--epochs", "5", "--time-limit-min", "1e-9") == 1  # no epoch finished
    config = json.loads((run / "config.json").read_text())
    assert config["result"]["stop_reason"] == "time_limit"
    assert not (run / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("arch", ["brnet", "irnet", "elemnet"])
def test_baselines_train(small_folder, tmp_path, arch):
    # 299 rows per batch over 300 rows leaves a batch of one, which BatchNorm cannot train on
    config = TrainConfig(arch=arch, epochs=1, batch_size=299, lr=1e-3, device="cpu")
    result = train(config, DataRequest(str(small_folder)), tmp_path / arch, progress=False)
    assert result.epochs_completed == 1 and result.best_epoch == 1
    assert np.isfinite(result.best_val_mae)


def test_early_stopping_keras_semantics():
    stopper = EarlyStopping(patience=2)
    assert stopper.step(1.0, 1) and stopper.best_epoch == 1
    assert not stopper.step(1.0, 2)  # equal is not an improvement
    assert not stopper.should_stop
    assert not stopper.step(1.5, 3)
    assert stopper.should_stop and stopper.best_epoch == 1
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.should_stop and restored.best == 1.0


def test_a_resume_needs_only_the_run_directory(small_folder, tmp_path):
    """config.json is the run: a resume rebuilds it from there (issue 18, item 7)."""
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--epochs", "1", "--precision", "bf16") == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    config = RunConfig.load(run)
    assert config.result is not None and config.result.epochs_completed == 2
    assert (config.train.precision, config.train.lr, config.train.batch_size) == ("bf16", 1e-3, 64)
    assert config.data.data == str(small_folder)  # from config.json: not on the second command line
    assert len(config.resumed) == 1
    with pytest.raises(SystemExit, match="lr"):  # another lr would be another run
        main(["train", "--out", str(run), "--resume", "--epochs", "3", "--lr", "0.5", "--no-progress"])


def test_options_not_given_take_the_one_set_of_defaults(small_folder, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(small_folder), "--out", str(run), "--epochs", "1", "--batch-size", "100",
            "--threads", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    config = RunConfig.load(run)
    assert asdict(config.train) == asdict(TrainConfig(epochs=1, batch_size=100, threads=1))
    assert asdict(config.data) == asdict(DataRequest(data=str(small_folder)))
    # the command line holds no default of its own: every option it was not given is None
    parsed = build_parser().parse_args(["train", "--out", str(run)])
    names = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(DataRequest)}
    assert all(getattr(parsed, name, None) is None for name in names)
