"""The models in models/: within the size budget, loadable, fully described, and their published test
figures reproduced exactly by ``ibrnet evaluate`` from this checkout (issue 4's acceptance check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.inference.manifest import MANIFEST_FILE, ModelManifest
from app.inference.registry import ModelRegistry
from app.settings import REPOSITORY_MODELS_DIR
from training.data import DataRequest
from training.domain import domain_of_request
from training.evaluate import evaluate

MODELS_BUDGET_BYTES = 120 * 1000 * 1000  # the repository's budget for models/
SHIPPED = sorted(path.parent for path in REPOSITORY_MODELS_DIR.glob(f"*/{MANIFEST_FILE}"))


def test_models_stay_within_the_budget():
    total = sum(path.stat().st_size for path in REPOSITORY_MODELS_DIR.rglob("*") if path.is_file())
    assert 0 < total <= MODELS_BUDGET_BYTES


def test_every_shipped_model_loads_with_both_variants():
    for prefer_int8 in (False, True):
        registry = ModelRegistry.load(
            REPOSITORY_MODELS_DIR,
            device="cpu",
            intra_op_threads=1,
            prefer_int8_on_cpu=prefer_int8,
            warmup_rows=4,
        )
        assert registry.failures == {}
        assert sorted(model.directory.name for model in registry.models) == [p.name for p in SHIPPED]


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_manifest_describes_how_the_model_was_made(model_dir: Path):
    manifest = ModelManifest.load(model_dir)
    training = manifest.training
    assert training.command.startswith("ibrnet train ")
    assert training.export_command.startswith("ibrnet export ")
    assert training.hardware and training.wall_time_s and training.epochs and training.seed is not None
    assert set(manifest.dataset.sha256) == {"train", "val", "test"}
    assert manifest.metrics["test"].n == manifest.dataset.sizes["test"]


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_evaluate_reproduces_the_published_test_figures(model_dir: Path):
    manifest = ModelManifest.load(model_dir)
    request = DataRequest(data=manifest.dataset.name, features=manifest.features.spec)
    for variant in ("fp32", *manifest.variants):
        published = manifest.metrics if variant == "fp32" else manifest.variants[variant].metrics
        scored = evaluate(model_dir, request, "test", variant)
        assert scored["n"] == published["test"].n
        assert scored["mae"] == published["test"].mae  # exactly: same rows, same ORT settings
        for key in ("within_1_sigma", "within_2_sigma", "sigma_error_spearman", "interval_coverage"):
            assert scored.get(key) == getattr(published["test"], key), key  # calibration and interval too
    # The training domain it records is its own train split's (scripts/record_training_domain.py).
    assert manifest.domain == domain_of_request(request)
