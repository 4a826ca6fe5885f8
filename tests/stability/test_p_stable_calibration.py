"""``p_stable`` through a model's calibration curve: the curve's fit, its use, the shipped one."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.special import ndtr

from app.inference.manifest import ModelManifest, StabilityCalibration
from app.inference.registry import ModelRegistry
from app.screening.compute import ScreenModels
from app.screening.dask_runner import ModelSpec, worker_models
from app.settings import REPOSITORY_MODELS_DIR
from app.stability.assess import SOURCE_PROPERTY, StabilityAssessor, p_stable
from app.stability.reference import load_reference
from app.stability.service import source_calibration
from training.stability import fit_curve

CURVE = StabilityCalibration(gaussian=[0.1, 0.5, 0.9], observed=[0.05, 0.6, 0.8])


def test_the_gaussian_probability_is_mapped_through_the_curve_and_held_flat_beyond_it():
    value = np.array([0.0, 0.3, -0.3, 0.05, np.nan])
    sigma = np.array([0.1, 0.1, 0.1, np.nan, 0.1])
    got = p_stable(value, sigma, CURVE)
    assert got[0] == pytest.approx(0.6)  # on the hull: Gaussian 0.5, a knot
    assert got[1] == pytest.approx(0.05) and got[2] == pytest.approx(0.8)  # beyond the end knots
    assert got[3] == 0.0  # no sigma: the step, as without a curve
    assert np.isnan(got[4])
    between = p_stable(np.array([-0.02533471]), np.array([0.1]), CURVE)[0]  # Gaussian 0.6
    assert between == pytest.approx(0.6 + 0.25 * 0.2, abs=1e-6)


def test_the_assessor_uses_its_curve_but_an_element_stays_certain(paper_reference):
    assessor = StabilityAssessor(load_reference(paper_reference), calibration=CURVE)
    _, plain = StabilityAssessor(load_reference(paper_reference)).above_hull(
        np.array([-1.52]), np.array([0.1]), np.array([-1.5]), np.array([2])
    )
    above, calibrated = assessor.above_hull(
        np.array([-1.52, 0.3]), np.array([0.1, 0.1]), np.array([-1.5, 0.0]), np.array([2, 1])
    )
    assert plain[0] == pytest.approx(ndtr(0.2))
    assert calibrated[0] == pytest.approx(CURVE.apply(ndtr(0.2)))
    assert calibrated[0] != pytest.approx(plain[0])
    assert above[1] == 0.0 and calibrated[1] == 1.0


def test_the_fitted_curve_recovers_a_known_miscalibration():
    # Compounds whose Gaussian probability is g are stable with probability g**2: an overconfident
    # model. The fitted curve must read g back as about g**2, and never decrease.
    generator = np.random.default_rng(0)
    gaussian = generator.uniform(0, 1, 40_000)
    stable = generator.uniform(0, 1, gaussian.size) < gaussian**2
    curve = fit_curve(gaussian, stable)
    assert np.all(np.diff(curve.observed) >= 0) and np.all(np.diff(curve.gaussian) > 0)
    assert curve.apply(np.array([0.3, 0.5, 0.8])) == pytest.approx([0.09, 0.25, 0.64], abs=0.04)
    assert curve.calibration_rows == 40_000


def test_the_shipped_source_model_carries_a_curve_fitted_on_every_validation_compound():
    manifests = [ModelManifest.load(path.parent) for path in REPOSITORY_MODELS_DIR.glob("*/model.json")]
    source = next(m for m in manifests if m.property == SOURCE_PROPERTY)
    curve = source.stability
    assert curve is not None and curve.calibration_rows == source.dataset.sizes["val"]
    assert np.all(np.diff(curve.observed) >= 0) and 0 <= curve.observed[0] <= curve.observed[-1] <= 1


@pytest.mark.parametrize(
    "gaussian, observed, wrong",
    [
        ([], [], "at least one"),
        ([0.1, 0.5], [0.2], "same number"),
        ([0.5, 0.1], [0.2, 0.3], "must increase"),
        ([0.1, 0.5], [0.3, 0.2], "must not decrease"),
        ([0.1, 0.5], [0.2, 1.5], "in [0, 1]"),
    ],
)
def test_a_manifest_with_a_bad_curve_is_refused_when_read(mp_models_dir, tmp_path, gaussian, observed, wrong):
    folder = tmp_path / "mp"
    shutil.copytree(mp_models_dir / "mp-formation-energy", folder)
    raw = json.loads((folder / "model.json").read_text())
    raw["stability"] = {"gaussian": gaussian, "observed": observed}
    (folder / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ValidationError, match=re.escape(wrong)):
        ModelManifest.load(folder)


def test_dask_workers_read_p_stable_through_the_clients_curve_and_a_screen_records_it(
    mp_models_dir, paper_reference, tmp_path
):
    models_dir = tmp_path / "models"
    shutil.copytree(mp_models_dir, models_dir)
    manifest = ModelManifest.load(models_dir / "mp-formation-energy")
    manifest.stability = CURVE
    manifest.save(models_dir / "mp-formation-energy")
    registry = ModelRegistry.load(models_dir, device="cpu", intra_op_threads=1, prefer_int8_on_cpu=False)
    client = ScreenModels.from_registry(
        registry,
        ["e_above_hull"],
        stability=StabilityAssessor(
            load_reference(paper_reference), calibration=source_calibration(registry)
        ),
    )
    assert client.describe()["e_above_hull"]["p_stable"] == f"curve {CURVE.digest}"
    spec = ModelSpec.of(client, models_dir, hull_reference=str(paper_reference))
    # The worker's own model.json now holds another curve for the same ONNX file: it must not matter.
    manifest.stability = StabilityCalibration(gaussian=[0.0, 1.0], observed=[0.0, 0.01])
    manifest.save(models_dir / "mp-formation-energy")
    worker = worker_models(spec)
    assert worker.stability is not None and worker.stability.calibration == CURVE
    assert worker.describe() == client.describe()
