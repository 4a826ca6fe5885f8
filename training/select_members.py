"""``ibrnet select-members``: which trained runs to export as one ensemble, judged on validation only.

Seeded runs of one recipe differ (the volume-per-atom runs: 0.324 to 0.356 Å³/atom validation
MAE), and adding a weak member can cost more than it brings, or bring less than the megabytes
it takes in models/. For every subset of the given runs this reports what the export would ship:

- the MAE of the mean with weights fitted as ``ibrnet export --member-weights fitted`` does, but
  out of fold: the validation rows are split in two halves, the weights are fitted on one half and
  predict the other, both ways round. Scored on the rows they were fitted on, fitted weights
  would flatter every larger subset (more weights to fit the same rows with);
- the MAE of the plain mean (``--member-weights equal``);
- Spearman's rank correlation between the members' spread (the served uncertainty, before its
  scale) and the error of that out-of-fold mean: whether more members make sigma a better flag.

Nothing is predicted or scored on the test split, so the choice is made before the one test score.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training.data import load_dataset
from training.export import load_members, member_outputs
from training.member_weights import fitted_weights
from training.metrics import spearman
from training.nets import member_spread

COMMAND = "ibrnet select-members"
# 2^12 - 13 subsets of two or more, each fitted three times: minutes, not hours
MAX_RUNS = 12

Folds = tuple[np.ndarray, np.ndarray]  # row indices of the two halves of validation


@dataclass(frozen=True)
class SubsetScore:
    runs: list[str]
    out_of_fold_mae: float  # fitted weights, each half of validation predicted by the other's fit
    plain_mean_mae: float
    sigma_error_spearman: float
    weights: list[float]  # fitted on all of validation: what the export would ship


def halves(rows: int, seed: int = 0) -> Folds:
    """A seeded split of validation into two halves (the same for every subset, so they compare)."""
    order = np.random.default_rng(seed).permutation(rows)
    return order[: rows // 2], order[rows // 2 :]


def out_of_fold_mean(predictions: np.ndarray, target: np.ndarray, folds: Folds) -> np.ndarray:
    """The weighted mean for every row, its weights fitted on the rows of the other half."""
    mean = np.empty(predictions.shape[1])
    first, second = folds
    for fit_rows, score_rows in ((first, second), (second, first)):
        weights = fitted_weights(predictions[:, fit_rows], target[fit_rows])
        mean[score_rows] = weights @ predictions[:, score_rows]
    return mean


def score_subset(predictions: np.ndarray, target: np.ndarray, folds: Folds) -> dict[str, float]:
    mean = out_of_fold_mean(predictions, target, folds)
    error = np.abs(mean - target)
    return {
        "out_of_fold_mae": float(error.mean()),
        "plain_mean_mae": float(np.abs(predictions.mean(0) - target).mean()),
        "sigma_error_spearman": spearman(member_spread(torch.from_numpy(predictions)).numpy(), error),
    }


def score_subsets(
    names: list[str], predictions: np.ndarray, target: np.ndarray, min_size: int = 2
) -> list[SubsetScore]:
    """Every subset of at least ``min_size`` members, best out-of-fold MAE first."""
    target = np.asarray(target, np.float64)
    predictions = np.asarray(predictions, np.float64)
    folds = halves(len(target))
    scores = []
    for size in range(min_size, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), size):
            chosen = predictions[list(subset)]
            scores.append(SubsetScore(
                runs=[names[i] for i in subset],
                **score_subset(chosen, target, folds),
                weights=[round(float(w), 4) for w in fitted_weights(chosen, target)],
            ))  # fmt: skip
    return sorted(scores, key=lambda s: s.out_of_fold_mae)


def validation_predictions(run_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Each run's best-epoch predictions on the validation split [k, n], and its targets."""
    configs, models = load_members(run_dirs, COMMAND)
    dataset = load_dataset(configs[0].data, splits=("val",))
    val = dataset.splits["val"]
    outputs = member_outputs(models, torch.from_numpy(val.x))
    return outputs[:, :, 0].double().numpy(), np.asarray(val.y, np.float64)


def print_table(names: list[str], predictions: np.ndarray, target: np.ndarray,
                scores: list[SubsetScore], top: int) -> None:  # fmt: skip
    print("validation MAE of each run:")
    for name, row in zip(names, predictions, strict=True):
        print(f"  {name}: {np.abs(row - target).mean():.5f}")
    print(f"\nsubsets, best out-of-fold fitted MAE first ({min(top, len(scores))} of {len(scores)}):")
    print(f"{'fitted (out of fold)':>21} {'plain mean':>11} {'rho(sigma,err)':>15}  runs (fitted weights)")
    for s in scores[:top]:
        runs = ", ".join(f"{r} {w:.3f}" for r, w in zip(s.runs, s.weights, strict=True))
        print(f"{s.out_of_fold_mae:>21.5f} {s.plain_mean_mae:>11.5f} {s.sigma_error_spearman:>15.3f}  {runs}")


def run(args: argparse.Namespace) -> int:
    run_dirs = [Path(p) for p in args.run_dir]
    if not 2 <= len(run_dirs) <= MAX_RUNS:
        raise SystemExit(f"{COMMAND}: give 2 to {MAX_RUNS} runs, not {len(run_dirs)}")
    if not 1 <= args.min_size <= len(run_dirs):
        raise SystemExit(f"{COMMAND}: --min-size {args.min_size} is outside 1..{len(run_dirs)}")
    names = [str(p) for p in run_dirs]
    predictions, target = validation_predictions(run_dirs)
    scores = score_subsets(names, predictions, target, args.min_size)
    if args.json:
        json.dump([asdict(s) for s in scores], sys.stdout, indent=2)
        print()
    else:
        print_table(names, predictions, target, scores, args.top)
    return 0
