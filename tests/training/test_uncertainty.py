"""A real 3-member ensemble (tests/training/conftest.py): calibration in evaluate and the manifest,
and fp16 weight storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

from app.cli import main
from app.inference.manifest import ONNX_FILE, ModelManifest, file_sha256
from training import fp16, onnx_model
from training.calibration import sigma_scale
from training.data import DataRequest, load_dataset
from training.metrics import calibration_metrics, spearman


@pytest.fixture(scope="module")
def ensembles(ensemble_members: list[Path], ensemble_folder: Path) -> dict[str, Path]:
    out = {}
    for weights in ("fp32", "fp16"):
        out[weights] = ensemble_folder.parent / f"ensemble-{weights}"
        args = ["export", *map(str, ensemble_members), "--out", str(out[weights]), "--weights", weights]
        assert main(args) == 0
    return out


def test_evaluate_reports_calibration_that_the_manifest_holds(ensembles, ensemble_folder, capsys):
    model_dir = ensembles["fp32"]
    manifest = ModelManifest.load(model_dir)
    assert manifest.output.kind == "ensemble" and manifest.output.members == 3
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--data", str(ensemble_folder), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    for split in ("val", "test"):
        m = manifest.metrics[split]
        assert 0.0 <= m.within_1_sigma <= m.within_2_sigma <= 1.0
        assert -1.0 <= m.sigma_error_spearman <= 1.0
    test = manifest.metrics["test"]
    for key in ("mae", "within_1_sigma", "within_2_sigma", "sigma_error_spearman"):
        assert scored[key] == getattr(test, key)  # evaluate reproduces export, digit for digit
    # recomputed here from the file's own output, independently of training.metrics
    x = load_dataset(DataRequest(str(ensemble_folder)), splits=("test",)).splits["test"]
    y = onnx_model.predict(onnx_model.session(model_dir / ONNX_FILE), x.x).astype(np.float64)
    error = np.abs(y[:, 0] - x.y.astype(np.float64))
    assert scored["within_1_sigma"] == pytest.approx(np.mean(error <= y[:, 1]))
    assert scored["within_2_sigma"] == pytest.approx(np.mean(error <= 2 * y[:, 1]))
    assert scored["sigma_error_spearman"] == pytest.approx(spearmanr(y[:, 1], error).statistic)
    assert main(["evaluate", str(model_dir), "--data", str(ensemble_folder)]) == 0
    assert "within 1 sigma" in capsys.readouterr().out


def test_point_models_carry_no_calibration(ensemble_members, ensemble_folder, capsys):
    model_dir = ensemble_folder.parent / "point"
    assert main(["export", str(ensemble_members[0]), "--out", str(model_dir)]) == 0
    assert ModelManifest.load(model_dir).metrics["test"].within_1_sigma is None
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--data", str(ensemble_folder), "--json"]) == 0
    assert "within_1_sigma" not in json.loads(capsys.readouterr().out.splitlines()[-1])


def test_fp16_weights_halve_the_file_and_stay_close_to_fp32(ensembles, ensemble_folder, capsys):
    fp32_path, fp16_path = ensembles["fp32"] / ONNX_FILE, ensembles["fp16"] / ONNX_FILE
    assert fp16_path.stat().st_size < 0.55 * fp32_path.stat().st_size
    graph = onnx.load(str(fp16_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer) >= 3 * 16
    dataset = load_dataset(DataRequest(str(ensemble_folder)), splits=("val", "test"))
    x = np.concatenate([dataset.splits["val"].x, dataset.splits["test"].x])  # 400 real compositions
    a = onnx_model.predict(onnx_model.session(fp32_path), x)
    b = onnx_model.predict(onnx_model.session(fp16_path), x)
    assert a.shape == b.shape == (400, 2)
    np.testing.assert_allclose(b, a, atol=5e-3, rtol=1e-2)  # eV/atom; half-precision weight rounding
    assert not np.array_equal(a, b)  # it did change the weights

    manifest, reference = ModelManifest.load(ensembles["fp16"]), ModelManifest.load(ensembles["fp32"])
    storage = manifest.model_extra["weights"]
    assert storage["storage"] == "float16" and storage["bytes"] == fp16_path.stat().st_size
    assert storage["fp32_bytes"] == fp32_path.stat().st_size
    assert storage["fp32_metrics"]["test"]["mae"] == reference.metrics["test"].mae
    assert storage["mae_delta_vs_fp32"]["test"] == pytest.approx(
        manifest.metrics["test"].mae - reference.metrics["test"].mae
    )
    assert manifest.onnx_sha256 == file_sha256(fp16_path)
    capsys.readouterr()
    assert main(["evaluate", str(ensembles["fp16"]), "--data", str(ensemble_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["mae"] == manifest.metrics["test"].mae


def test_fp16_keeps_small_and_out_of_range_tensors_float32(tmp_path):
    weight = np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32)
    huge = np.full((32, 64), 1e6, dtype=np.float32)  # beyond float16's range: must stay float32
    bias = np.ones(32, dtype=np.float32)
    make = onnx.helper.make_node
    nodes = [
        make("MatMul", ["x", "w"], ["h"]),
        make("Add", ["h", "b"], ["a"]),
        make("MatMul", ["a", "big"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.numpy_helper.from_array(a, n) for a, n in ((weight, "w"), (bias, "b"), (huge, "big"))],
    )  # fmt: skip
    source = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(source))
    assert fp16.convert(source, tmp_path / "h.onnx") == 1
    kinds = {t.name: t.data_type for t in onnx.load(str(tmp_path / "h.onnx")).graph.initializer}
    assert kinds == {
        "w__fp16": onnx.TensorProto.FLOAT16,
        "b": onnx.TensorProto.FLOAT,
        "big": onnx.TensorProto.FLOAT,
    }
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    expected = ((x @ weight.astype(np.float16).astype(np.float32)) + bias) @ huge
    got = onnx_model.predict(onnx_model.session(tmp_path / "h.onnx"), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, 300).astype(float)  # many ties
    b = a + rng.normal(size=300)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_calibration_counts_rows_within_one_and_two_sigma():
    target = np.zeros(4)
    mean = np.array([0.5, 1.5, 3.0, -0.1])
    sigma = np.ones(4)
    result = calibration_metrics(target, mean, sigma)
    assert result["within_1_sigma"] == 0.5  # 0.5 and -0.1
    assert result["within_2_sigma"] == 0.75  # and 1.5
    with pytest.raises(ValueError):
        calibration_metrics(target, mean, sigma[:3])


def test_sigma_is_scaled_to_one_validation_sigma(ensembles, ensemble_folder):
    """Export fits the scale on validation: 68.3% of validation rows within one served sigma."""
    for model_dir in ensembles.values():
        manifest = ModelManifest.load(model_dir)
        assert manifest.output.sigma_scale is not None and manifest.output.sigma_scale > 0
        assert manifest.metrics["val"].within_1_sigma == pytest.approx(0.683, abs=0.01)


def test_sigma_scale_is_the_quantile_of_error_over_sigma():
    target = np.array([0.0, 0.0, 0.0, 0.0, 5.0])
    mean = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    std = np.array([1.0, 1.0, 1.0, 1.0, 0.0])  # the last row: members agree exactly, left out
    scale = sigma_scale(target, mean, std)
    assert np.mean(np.abs(target - mean)[:4] <= scale * std[:4]) == pytest.approx(0.75)
    assert scale == pytest.approx(np.quantile([1.0, 2.0, 3.0, 4.0], 0.6827))
    assert sigma_scale(target, mean, np.zeros(5)) == 1.0
