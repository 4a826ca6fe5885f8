"""Regression metrics, computed the same way everywhere (float64, on float32 predictions)."""

from __future__ import annotations

import numpy as np


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
