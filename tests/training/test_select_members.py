"""ibrnet select-members: every subset of real trained runs scored as an ensemble, on validation only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.cli import main
from training.data import DataRequest, load_dataset
from training.member_weights import fitted_weights
from training.run_dir import load_best_model
from training.select_members import halves, out_of_fold_mean, score_subsets
from training.train import TrainConfig, predict


def test_every_subset_is_scored_and_test_targets_change_nothing(ensemble_members, ensemble_folder, capsys):
    command = ["select-members", *map(str, ensemble_members), "--json"]
    assert main(command) == 0
    scores = json.loads(capsys.readouterr().out)
    test_file = ensemble_folder / "test.csv"
    original = test_file.read_bytes()
    frame = pd.read_csv(test_file)
    frame["target"] = frame["target"].sample(frac=1.0, random_state=0).to_numpy() + 100.0
    try:
        frame.to_csv(test_file, index=False)
        assert main(command) == 0
        assert json.loads(capsys.readouterr().out) == scores  # the choice never looks at test
    finally:
        test_file.write_bytes(original)

    names = [str(p) for p in ensemble_members]
    assert sorted(tuple(s["runs"]) for s in scores) == sorted(
        [(names[0], names[1]), (names[0], names[2]), (names[1], names[2]), tuple(names)]
    )
    assert [s["out_of_fold_mae"] for s in scores] == sorted(s["out_of_fold_mae"] for s in scores)
    for s in scores:
        assert all(w >= 0 for w in s["weights"]) and sum(s["weights"]) == pytest.approx(1, abs=1e-3)
        assert -1 <= s["sigma_error_spearman"] <= 1

    # the plain mean of all three, computed here from each run's best epoch on validation
    val = load_dataset(DataRequest(str(ensemble_folder)), splits=("val",)).splits["val"]
    each = [
        predict(load_best_model(run)[1], torch.from_numpy(val.x), TrainConfig.eval_batch_size).numpy().ravel()
        for run in ensemble_members
    ]
    everyone = next(s for s in scores if len(s["runs"]) == 3)
    expected = np.abs(np.mean(each, axis=0) - val.y).mean()
    assert everyone["plain_mean_mae"] == pytest.approx(expected, rel=1e-6)


def test_the_weights_never_see_the_rows_they_predict():
    """Each member is exact on one half and off by 1 on the other: fitted on the half where the
    first is exact, the weights pick it, and on the other half they pay for that choice."""
    rows = 1000
    first, second = halves(rows)
    target = np.linspace(-1.0, 1.0, rows)
    good_on_first, good_on_second = target + 1.0, target + 1.0
    good_on_first[first] = target[first]
    good_on_second[second] = target[second]
    predictions = np.stack([good_on_first, good_on_second])

    mean = out_of_fold_mean(predictions, target, (first, second))
    np.testing.assert_allclose(mean[second], good_on_first[second])  # weights (1, 0), fitted on `first`
    np.testing.assert_allclose(mean[first], good_on_second[first])
    assert np.abs(mean - target).mean() == pytest.approx(1.0)
    in_sample = fitted_weights(predictions, target) @ predictions  # 0.5 / 0.5: off by 0.5 everywhere
    assert np.abs(in_sample - target).mean() == pytest.approx(0.5)


def test_identical_members_score_as_one():
    target = np.linspace(0.0, 3.0, 400)
    member = target + np.sin(np.arange(400.0))
    (score,) = score_subsets(["a", "b"], np.stack([member, member]), target)
    single = np.abs(member - target).mean()
    assert score.out_of_fold_mae == pytest.approx(single) and score.plain_mean_mae == pytest.approx(single)


def test_one_run_is_refused(ensemble_members: list[Path]):
    with pytest.raises(SystemExit, match="give 2 to 12 runs, not 1"):
        main(["select-members", str(ensemble_members[0])])
