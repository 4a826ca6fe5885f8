"""90% prediction intervals by split-conformal calibration on validation, normalised by sigma.

For each validation row the score is |y - mean| / sigma (sigma: the served, already calibrated
uncertainty). The interval scale q is the ceil((n + 1) * level)-th smallest score, the finite-sample
split-conformal quantile: when test rows are exchangeable with validation rows, at least ``level`` of
them fall inside mean +- q * sigma. Validation chooses q; the test split only measures coverage.
Rows whose sigma is 0 (every member agrees exactly) carry no scale and are left out of the fit.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from app.inference.manifest import ONNX_FILE, IntervalCalibration, ModelManifest, SplitMetrics, file_sha256
from training import onnx_model
from training.data import DataRequest, Dataset, load_dataset
from training.metrics import prediction_metrics

LEVEL = 0.9


def conformal_scale(
    target: np.ndarray, mean: np.ndarray, sigma: np.ndarray, level: float = LEVEL
) -> tuple[float, int]:
    """(q, rows used): the normalised split-conformal quantile at ``level``."""
    y, m, s = (np.asarray(a, dtype=np.float64).ravel() for a in (target, mean, sigma))
    usable = s > 0
    scores = np.sort(np.abs(y - m)[usable] / s[usable])
    n = len(scores)
    if n == 0:
        raise ValueError("no validation row has a positive sigma: nothing to calibrate an interval on")
    rank = min(math.ceil((n + 1) * level), n)  # 1-based; capped for the tiny n where it would exceed n
    return float(scores[rank - 1]), n


def calibrate(
    target: np.ndarray, mean: np.ndarray, sigma: np.ndarray, level: float = LEVEL
) -> IntervalCalibration:
    scale, rows = conformal_scale(target, mean, sigma, level)
    return IntervalCalibration(level=level, scale=scale, calibration_rows=rows)


def fit_on_file(path: Path, dataset: Dataset) -> IntervalCalibration:
    """The interval of the ONNX file as served, fitted on the dataset's validation split."""
    val = dataset.splits["val"]
    predicted = onnx_model.predict(onnx_model.session(path), val.x).astype(np.float64)
    interval = calibrate(val.y, predicted[:, 0], predicted[:, 1])
    print(f"interval: {100 * interval.level:.0f}% split-conformal scale {interval.scale:.3f} sigma "
          f"({interval.calibration_rows} validation rows)", file=sys.stderr)  # fmt: skip
    return interval


def add_to_model(model_dir: Path, data: str | None = None) -> ModelManifest:
    """Fit the interval of a shipped model with an uncertainty and record it (and its validation and
    test coverage) in its model.json; the ONNX file, and so the model version, stay as they are."""
    manifest = ModelManifest.load(model_dir)
    if manifest.output.kind != "ensemble":
        raise SystemExit(
            f"ibrnet calibrate-interval: {model_dir} serves no uncertainty to build an interval on"
        )
    path = model_dir / ONNX_FILE
    if file_sha256(path) != manifest.onnx_sha256:
        raise SystemExit(f"ibrnet calibrate-interval: {path} is not the file model.json describes")
    request = DataRequest(data=data or manifest.dataset.name, features=manifest.features.spec)
    dataset = load_dataset(request, splits=("val", "test"))
    hashes = dataset.info()["sha256"]
    if any(manifest.dataset.sha256.get(split) != hashes[split] for split in ("val", "test")):
        raise SystemExit(
            f"ibrnet calibrate-interval: {request.data} is not the data {model_dir} was made from"
        )
    interval = fit_on_file(path, dataset)
    floor = manifest.architecture.config.get("target_floor")
    session = onnx_model.session(path)
    for split in ("val", "test"):
        rows = dataset.splits[split]
        scored = prediction_metrics(rows.y, onnx_model.predict(session, rows.x), interval, floor)
        manifest.metrics[split] = SplitMetrics(**scored)
    manifest.output.interval = interval
    manifest.save(model_dir)
    return manifest


def run(args: argparse.Namespace) -> int:
    for folder in args.model_dir:
        manifest = add_to_model(Path(folder), args.data)
        coverage = ", ".join(
            f"{split} {100 * (m.interval_coverage or 0):.1f}%" for split, m in manifest.metrics.items()
        )
        print(f"{manifest.name}: {100 * LEVEL:.0f}% interval = value +- {manifest.output.interval.scale:.3f} "  # type: ignore[union-attr]
              f"sigma; coverage {coverage}")  # fmt: skip
    return 0
