"""The weight average: its arithmetic, and that training validates, keeps and resumes the averaged
weights (real rows of the packaged OQMD files, real training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.run_helpers import read_log, train_run
from training.data import DataRequest, load_dataset
from training.metrics import regression_metrics
from training.nets import NetConfig, build_network
from training.run_dir import BEST_FILE, CHECKPOINT_FILE, load_best_model
from training.weight_average import WeightAverage


def _tiny_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))


def test_the_average_follows_the_warmed_up_decay_and_leaves_the_live_weights_alone():
    live = _tiny_net()
    start = [t.detach().clone() for t in (live[0].weight, live[1].running_mean)]
    average = WeightAverage(live, decay=0.9)
    expected = [t.clone() for t in start]
    for step in (1, 2, 3):
        with torch.no_grad():
            live[0].weight.add_(1.0)
            live[1].running_mean.add_(2.0)
            live[1].num_batches_tracked.add_(1)
        average.update()
        decay = min(0.9, (1 + step) / (10 + step))  # 2/11, 3/12, 4/13: the warm-up, below 0.9
        current = [live[0].weight, live[1].running_mean]
        expected = [decay * e + (1 - decay) * c for e, c in zip(expected, current, strict=True)]
        assert torch.allclose(average.model[0].weight, expected[0])
        assert torch.allclose(average.model[1].running_mean, expected[1])  # BatchNorm statistics too
    assert torch.allclose(live[0].weight, start[0] + 3.0)  # the live network is never touched
    assert int(average.model[1].num_batches_tracked) == 0  # integer buffers are not averaged
    assert not average.model[0].weight.requires_grad
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        WeightAverage(live, decay=1.0)


def _train(folder: Path, out: Path, *extra: str) -> int:
    return train_run(folder, out, "--weight-average-decay", "0.9", *extra)


def _val_mae(run: Path, state: dict[str, torch.Tensor]) -> float:
    config = json.loads((run / "config.json").read_text())
    model = build_network(NetConfig.from_dict(config["net"]))
    model.load_state_dict(state)
    model.eval()
    val = load_dataset(DataRequest.from_dict(config["data"])).splits["val"]
    with torch.no_grad():
        predicted = model(torch.from_numpy(val.x)).squeeze(1).numpy()
    return regression_metrics(val.y, predicted)["mae"]


def test_training_validates_and_keeps_the_averaged_weights(small_folder, tmp_path):
    run = tmp_path / "run"
    assert _train(small_folder, run, "--epochs", "2") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["weight_average_decay"] == 0.9
    assert "--weight-average-decay 0.9" in config["command"]
    checkpoint = torch.load(run / CHECKPOINT_FILE, weights_only=False)
    last = read_log(run)[-1]
    averaged = _val_mae(run, checkpoint["weight_average"]["model"])
    assert averaged == pytest.approx(float(last["val_mae"]), rel=1e-6)  # the logged score is the average's
    assert _val_mae(run, checkpoint["model"]) != pytest.approx(averaged, rel=1e-3)  # not the live weights'
    _, best = load_best_model(run)
    best_epoch_mae = _val_mae(run, best.state_dict())
    assert best_epoch_mae == pytest.approx(config["result"]["best_val_mae"], rel=1e-6)


def test_a_resumed_run_continues_the_average_exactly(small_folder, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(small_folder, straight, "--epochs", "3") == 0
    assert _train(small_folder, split, "--epochs", "1") == 0
    assert _train(small_folder, split, "--epochs", "3", "--resume") == 0
    assert [r["val_mae"] for r in read_log(straight)] == [r["val_mae"] for r in read_log(split)]
    best_a = torch.load(straight / BEST_FILE, weights_only=True)["model"]
    best_b = torch.load(split / BEST_FILE, weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.parametrize("decay", ["1", "0", "-0.5", "abc"])
def test_a_decay_outside_the_open_unit_interval_is_refused_by_name(small_folder, tmp_path, decay, capsys):
    with pytest.raises(SystemExit):
        _train(small_folder, tmp_path / "run", "--epochs", "1", "--weight-average-decay", decay)
    assert "--weight-average-decay" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
