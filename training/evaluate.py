"""``ibrnet evaluate MODEL_DIR --data ... --split test``: MAE, RMSE, R2 and n through ONNX Runtime.

For an ensemble or a distilled student (output [n, 2] = mean, sigma) it adds calibration: the
share of rows within 1 and 2 sigma, the Spearman rank correlation between sigma and |error|, and
the share of rows inside the served prediction interval (model.json's output.interval).

Deliberately torch-free: it scores the shipped file exactly as the service would run it, and
reproduces the metrics ``ibrnet export`` wrote into model.json (same data path, same ORT call).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.chemistry.formula import parse_formula
from app.inference.manifest import (
    INT8_ONNX_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    ModelManifest,
    file_sha256,
    version_from_sha256,
)
from training import onnx_model
from training.data import DataRequest, describe, load_dataset
from training.metrics import prediction_metrics


def evaluate(model_dir: Path, request: DataRequest, split: str, variant: str = "fp32") -> dict[str, Any]:
    if not (model_dir / MANIFEST_FILE).exists():
        raise SystemExit(f"ibrnet evaluate: {model_dir} is not a model directory (no {MANIFEST_FILE})")
    manifest = ModelManifest.load(model_dir)
    if variant == "int8":
        if "int8" not in manifest.variants:
            raise SystemExit(
                f"ibrnet evaluate: {model_dir} has no int8 variant (export with --quantize int8)"
            )
        path, expected = model_dir / INT8_ONNX_FILE, manifest.variants["int8"].sha256
    else:
        path, expected = model_dir / ONNX_FILE, manifest.onnx_sha256
    actual = file_sha256(path)
    if actual != expected:  # the registry refuses such a file too
        raise SystemExit(f"ibrnet evaluate: {path} has sha256 {actual}, but model.json says {expected}")
    if request.features != manifest.features.spec:
        request = replace(request, features=manifest.features.spec)
    dataset = load_dataset(request, splits=(split,))
    print(describe(dataset), file=sys.stderr)
    rows = dataset.splits[split]
    predicted = onnx_model.predict(onnx_model.session(path), rows.x)  # [n, 1], or [n, 2] for an ensemble
    return {
        "model": manifest.name,
        "version": version_from_sha256(actual),  # what the service reports for this file
        "variant": variant,
        "property": manifest.property,
        "unit": manifest.unit,
        "dataset": dataset.name,
        "split": split,
        **prediction_metrics(
            rows.y, predicted, manifest.output.interval, manifest.architecture.config.get("target_floor")
        ),
        "skipped_rows": sum(rows.skipped.values()),
        **outside_domain(manifest, rows.formulas, rows.y, predicted[:, 0]),
    }


def outside_domain(
    manifest: ModelManifest, formulas: list[str], target: np.ndarray, predicted: np.ndarray
) -> dict[str, Any]:
    """How many rows lie outside the model's training domain and their MAE beside the others'
    (the figures above cover every row, as the published ones do)."""
    domain = manifest.domain
    if domain is None:
        return {}
    exact = manifest.output.elements_are_zero
    outside = np.array([domain.warning(parse_formula(text), exact) is not None for text in formulas])
    errors = np.abs(np.asarray(predicted, dtype=np.float64) - target)
    return {
        "outside_domain": {
            "n": int(outside.sum()),
            "mae": float(errors[outside].mean()) if outside.any() else None,
            "mae_inside": float(errors[~outside].mean()) if (~outside).any() else None,
        }
    }


def manifest_level(model_dir: Path) -> float:
    interval = ModelManifest.load(model_dir).output.interval
    return interval.level if interval is not None else float("nan")


def run(args: argparse.Namespace) -> int:
    given = {"data": args.data, "limit": args.limit, "formula_column": args.formula_column,
             "target_column": args.target_column}  # fmt: skip
    request = DataRequest(**{k: v for k, v in given.items() if v is not None})  # defaults: DataRequest's
    result = evaluate(Path(args.model_dir), request, args.split, args.variant)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} {result['version']} ({result['variant']}) on {result['dataset']} "
              f"{result['split']}: MAE {result['mae']:.5f} {result['unit']}, RMSE {result['rmse']:.5f}, "
              f"R2 {result['r2']:.4f}, n {result['n']}")  # fmt: skip
        if "within_1_sigma" in result:
            print(f"calibration: {100 * result['within_1_sigma']:.1f}% of rows within 1 sigma (68.3% if "
                  f"Gaussian), {100 * result['within_2_sigma']:.1f}% within 2 sigma (95.4%), Spearman "
                  f"rho(sigma, |error|) {result['sigma_error_spearman']:.3f}")  # fmt: skip
        if "interval_coverage" in result:
            level = manifest_level(Path(args.model_dir))
            print(f"interval: {100 * result['interval_coverage']:.1f}% of rows inside the served "
                  f"{100 * level:.0f}% interval")  # fmt: skip
        if "outside_domain" in result:
            out = result["outside_domain"]
            inside = "" if out["mae_inside"] is None else f"; inside {out['mae_inside']:.5f}"
            mae = "" if out["mae"] is None else f" (MAE {out['mae']:.5f}{inside})"
            print(f"training domain: {out['n']} of {result['n']} rows outside{mae}")
    return 0
