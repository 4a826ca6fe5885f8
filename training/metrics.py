"""Regression metrics, computed the same way everywhere (float64, on float32 predictions)."""

from __future__ import annotations

import numpy as np

from app.inference.manifest import IntervalCalibration


def regression_metrics(target: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
    y = np.asarray(target, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} targets but {len(p)} predictions")
    if len(y) == 0:
        raise ValueError("no rows to score")
    error = p - y
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "n": len(y),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / counts)[group]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); NaN when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt(np.sum(ra**2) * np.sum(rb**2)))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def calibration_metrics(target: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """How far an ensemble's standard deviation can be trusted on these rows.

    A Gaussian with the right width puts 68.3% of the errors within 1 sigma and 95.4% within
    2 sigma; the rank correlation says whether a larger sigma does flag a larger error.
    """
    y = np.asarray(target, dtype=np.float64).ravel()
    error = np.abs(np.asarray(mean, dtype=np.float64).ravel() - y)
    s = np.asarray(sigma, dtype=np.float64).ravel()
    if not (len(y) == len(error) == len(s)) or len(y) == 0:
        raise ValueError(f"{len(y)} targets, {len(error)} means and {len(s)} sigmas: need as many, > 0")
    return {
        "within_1_sigma": float(np.mean(error <= s)),
        "within_2_sigma": float(np.mean(error <= 2 * s)),
        "sigma_error_spearman": spearman(s, error),
    }


def interval_coverage(target: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    y = np.asarray(target, dtype=np.float64).ravel()
    return float(np.mean((np.asarray(low, np.float64) <= y) & (y <= np.asarray(high, np.float64))))


def prediction_metrics(
    target: np.ndarray, predicted: np.ndarray, interval: IntervalCalibration | None = None,
    floor: float | None = None,
) -> dict[str, float | int]:  # fmt: skip
    """Regression metrics of column 0; for an [n, 2] output (mean, sigma), calibration of column 1
    too, and with ``interval`` the share of rows inside the served interval."""
    values = np.asarray(predicted)
    metrics: dict[str, float | int] = regression_metrics(target, values[:, 0])
    if values.ndim == 2 and values.shape[1] == 2:
        metrics.update(calibration_metrics(target, values[:, 0], values[:, 1]))
        if interval is not None:
            mean, sigma = values[:, 0].astype(np.float64), values[:, 1].astype(np.float64)
            low, high = interval.bounds(mean, sigma, None)  # type: ignore[arg-type]
            if floor is not None:
                low = np.maximum(low, floor)
            metrics["interval_coverage"] = interval_coverage(target, low, high)
    return metrics
