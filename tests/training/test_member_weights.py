"""The member weights export fits on validation: the exact minimum of the weighted mean's MAE."""

from __future__ import annotations

import itertools

import numpy as np

from training.member_weights import equal_weights, fitted_weights


def _mae(weights: np.ndarray, predictions: np.ndarray, target: np.ndarray) -> float:
    return float(np.abs(weights @ predictions - target).mean())


def test_a_member_that_is_always_right_takes_all_the_weight():
    rng = np.random.default_rng(0)
    target = rng.normal(size=500)
    predictions = np.stack([target + rng.normal(scale=0.3, size=500), target, target + 1.0])
    np.testing.assert_allclose(fitted_weights(predictions, target), [0.0, 1.0, 0.0], atol=1e-9)


def test_the_fit_is_the_minimum_over_the_simplex():
    rng = np.random.default_rng(1)
    target = rng.standard_t(df=3, size=2_000)  # heavy tails, as formation-enthalpy errors are
    noise_and_bias = ((0.2, 0.05), (0.3, -0.1), (0.5, 0.0))
    predictions = np.stack([target + rng.laplace(scale=s, size=2_000) + b for s, b in noise_and_bias])
    weights = fitted_weights(predictions, target)
    assert np.all(weights >= 0) and abs(weights.sum() - 1) < 1e-9
    best = _mae(weights, predictions, target)
    grid = np.linspace(0, 1, 51)
    for a, b in itertools.product(grid, grid):
        if a + b <= 1:  # every point of a 0.02 grid on the simplex is at least as bad
            assert best <= _mae(np.array([a, b, 1 - a - b]), predictions, target) + 1e-12
    assert best < _mae(equal_weights(3), predictions, target)


def test_one_member_keeps_its_weight():
    assert fitted_weights(np.zeros((1, 4)), np.ones(4)).tolist() == [1.0]


def test_the_weights_do_not_depend_on_a_shift_shared_by_target_and_members():
    rng = np.random.default_rng(2)
    target = rng.lognormal(np.log(15.0), 0.4, size=3_000)  # volumes per atom, Å³
    predictions = np.stack([target + rng.laplace(scale=s, size=3_000) for s in (0.2, 0.3, 0.4)])
    shift = rng.uniform(-1e3, 1e3, size=3_000)  # each row moved by its own amount
    np.testing.assert_allclose(
        fitted_weights(predictions + shift, target + shift), fitted_weights(predictions, target), atol=1e-6
    )
