"""Export, evaluate and predict on real data: the chain a user runs, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from app.chemistry.formula import parse_formula
from app.cli import main
from app.inference.manifest import INT8_ONNX_FILE, ONNX_FILE, ModelManifest, file_sha256
from training import export as export_module
from training import onnx_model
from training.data import DataRequest, load_dataset
from training.export import (
    INT8_VAL_TOLERANCE,
    ParityError,
    check_parity,
    layer_weights,
    parity_inputs,
    quantize_int8,
    quantize_layers,
    score,
)
from training.run_dir import load_best_model

LIMIT = "2000"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("chain") / "run"
    code = main(
        ["train", "--data", "oqmd-formation-enthalpy", "--limit", LIMIT, "--epochs", "2",
         "--batch-size", "256", "--lr", "1e-3", "--out", str(run), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    model_dir = models / "oqmd-formation-enthalpy"
    assert main(["export", str(trained_run), "--out", str(model_dir), "--quantize", "int8"]) == 0
    return model_dir


def test_chain_train_export_evaluate_predict(exported, capsys):
    manifest = ModelManifest.load(exported)
    capsys.readouterr()
    args = [
        "evaluate",
        str(exported),
        "--data",
        "oqmd-formation-enthalpy",
        "--split",
        "test",
        "--limit",
        LIMIT,
    ]
    assert main([*args, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n"] == manifest.metrics["test"].n == 2000
    for key in ("mae", "rmse", "r2"):  # reproduced exactly, not approximately
        assert scored[key] == getattr(manifest.metrics["test"], key)
    assert scored["version"] == manifest.version
    # Test rows outside the training domain it records, counted one formula at a time.
    test = load_dataset(DataRequest(data="oqmd-formation-enthalpy", limit=2000), splits=("test",))
    outside = [t for t in test.splits["test"].formulas if manifest.domain.warning(parse_formula(t))]
    assert scored["outside_domain"]["n"] == len(outside)

    assert main([*args, "--variant", "int8", "--json"]) == 0
    scored_int8 = json.loads(capsys.readouterr().out)
    assert scored_int8["mae"] == manifest.variants["int8"].metrics["test"].mae

    assert main(["predict", "Fe2O3", "--models", str(exported.parent), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    text = json.dumps(answer)
    assert manifest.version in text and "formation_enthalpy" in text


def test_manifest_is_complete(exported, trained_run):
    manifest = ModelManifest.load(exported)
    assert manifest.name == "oqmd-formation-enthalpy"
    assert (manifest.property, manifest.unit) == ("formation_enthalpy", "eV/atom")
    assert manifest.onnx_sha256 == file_sha256(exported / ONNX_FILE)
    assert manifest.version == manifest.onnx_sha256[:12]
    assert manifest.features.spec == "ef" and manifest.features.width == 86
    assert manifest.features.elements[:3] == ["H", "Li", "Be"] and len(manifest.features.elements) == 86
    assert manifest.architecture.name == "ibrnet" and manifest.architecture.parameters == 4_548_385
    assert manifest.output.kind == "point"
    assert set(manifest.metrics) == {"val", "test"}
    assert manifest.dataset.sizes == {"train": 2000, "val": 2000, "test": 2000}
    assert len(manifest.dataset.sha256) == 3 and manifest.dataset.skipped_rows == {
        "train": 0,
        "val": 0,
        "test": 0,
    }
    # The training domain: counted from the 2,000 labelled train compounds the network saw.
    train = load_dataset(DataRequest(data="oqmd-formation-enthalpy", limit=2000), splits=("train",))
    parsed = [parse_formula(text).elements for text in train.splits["train"].formulas]
    assert manifest.domain is not None
    assert manifest.domain.element_counts == (min(map(len, parsed)), max(map(len, parsed)))
    assert manifest.domain.elements["O"] == sum("O" in elements for elements in parsed)
    assert sum(manifest.domain.elements.values()) == sum(map(len, parsed))
    training = manifest.training
    assert training.command.startswith("ibrnet train --data oqmd-formation-enthalpy")
    assert training.seed == 0 and training.epochs == 2 and training.best_epoch in (1, 2)
    assert training.wall_time_s > 0 and training.hardware
    assert any("OQMD" in c for c in manifest.citations)
    assert any("Sparks" in c for c in manifest.citations)  # the CrabNet authors
    # iBRNet is the J. Cheminform. 2024 paper; Sci. Rep. 13, 9128 is BRNet's.
    assert any(c.startswith("iBRNet:") and "10.1186/s13321-024-00811-6" in c for c in manifest.citations)
    assert not any("9128" in c for c in manifest.citations)
    variant = manifest.variants["int8"]
    assert variant.file == INT8_ONNX_FILE and variant.sha256 == file_sha256(exported / INT8_ONNX_FILE)
    assert variant.metrics["test"].n == 2000
    # exactly the layers at or above the chosen size are int8, the rest stay float32
    sizes = layer_weights(exported / ONNX_FILE)
    assert variant.layers == len(sizes) == 24  # iBRNet's dense layers, skips included
    assert variant.quantized_layers == sum(size >= variant.min_layer_weights for size in sizes.values())
    assert variant.metrics["val"].mae <= manifest.metrics["val"].mae * (1 + INT8_VAL_TOLERANCE)


def test_onnx_signature(exported):
    model = onnx.load(str(exported / ONNX_FILE))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert (graph_input.name, graph_output.name) == ("x", "y")
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and in_dims[1].dim_value == 86  # dynamic batch axis
    assert out_dims[0].dim_param and out_dims[1].dim_value == 1
    session = onnx_model.session(exported / ONNX_FILE)
    for n in (1, 7, 3000):
        assert onnx_model.predict(session, np.zeros((n, 86), np.float32)).shape == (n, 1)


def test_onnx_matches_pytorch_on_1000_real_inputs(trained_run, exported):
    config, model = load_best_model(trained_run)
    dataset = load_dataset(config.data, splits=("val", "test"))
    x = parity_inputs(dataset)
    assert x.shape == (1000, 86) and np.allclose(x.sum(axis=1), 1.0, atol=1e-5)  # real compositions
    assert check_parity(model, exported / ONNX_FILE, x) <= 1e-4
    with torch.no_grad():  # the check fails when the file no longer computes what the network does
        model.head.bias += 1e-3
    with pytest.raises(ParityError, match="differ"):
        check_parity(model, exported / ONNX_FILE, x)


def test_ensemble_export(small_folder, tmp_path, capsys):
    runs = []
    for seed in ("0", "1"):
        run = tmp_path / f"member{seed}"
        args = [
            "train",
            "--data",
            str(small_folder),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "100",
        ]
        assert main([*args, "--seed", seed, "--no-progress"]) == 0
        runs.append(run)
    model_dir = tmp_path / "ensemble"
    assert main(["export", *map(str, runs), "--out", str(model_dir)]) == 0
    manifest = ModelManifest.load(model_dir)
    assert manifest.output.kind == "ensemble" and manifest.output.members == 2
    assert manifest.architecture.parameters == 2 * 4_548_385
    x = load_dataset(DataRequest(str(small_folder)), splits=("test",)).splits["test"].x
    y = onnx_model.predict(onnx_model.session(model_dir / ONNX_FILE), x)
    members = [load_best_model(run)[1] for run in runs]
    with torch.no_grad():
        each = np.stack([m(torch.from_numpy(x)).numpy()[:, 0] for m in members])
    assert y.shape == (len(x), 2)
    np.testing.assert_allclose(y[:, 0], each.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(y[:, 1], manifest.output.sigma_scale * each.std(axis=0), atol=1e-5)
    assert main(["evaluate", str(model_dir), "--data", str(small_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["mae"] == manifest.metrics["test"].mae
    assert manifest.output.member_weights == [0.5, 0.5] and manifest.output.member_weights_fit == "equal"

    fitted_dir = tmp_path / "ensemble-fitted"
    assert main(["export", *map(str, runs), "--out", str(fitted_dir), "--member-weights", "fitted"]) == 0
    fitted = ModelManifest.load(fitted_dir)
    weights = np.array(fitted.output.member_weights)
    assert fitted.output.member_weights_fit == "fitted"
    assert "--member-weights fitted" in fitted.training.export_command
    assert np.all(weights >= 0) and abs(weights.sum() - 1) < 1e-5
    y_fitted = onnx_model.predict(onnx_model.session(fitted_dir / ONNX_FILE), x)
    np.testing.assert_allclose(y_fitted[:, 0], weights @ each, atol=1e-5)
    np.testing.assert_allclose(y_fitted[:, 1] / fitted.output.sigma_scale, each.std(axis=0), atol=1e-5)
    # equal weights are one point of the simplex the fit searches, so validation cannot get worse
    assert fitted.metrics["val"].mae <= manifest.metrics["val"].mae + 1e-6


def test_evaluate_does_not_need_torch():
    code = "import sys, training.evaluate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_int8_can_leave_the_narrow_layers_in_float32(exported, tmp_path):
    sizes = layer_weights(exported / ONNX_FILE)
    wide = {name for name, size in sizes.items() if size >= 2**18}
    assert len(wide) == 6  # the two 1024x1024 branch layers and the first three trunk layers
    assert quantize_layers(exported / ONNX_FILE, tmp_path / "int8.onnx", 2**18) == len(wide)
    quantized = onnx.load(str(tmp_path / "int8.onnx")).graph
    float_layers = [n.name for n in quantized.node if n.op_type in ("Gemm", "MatMul")]
    assert len(float_layers) == len(sizes) - len(wide)
    assert not any(name in wide for name in float_layers)


def test_an_int8_variant_above_the_test_limit_is_not_written(exported, tmp_path, monkeypatch, capsys):
    dataset = load_dataset(DataRequest("oqmd-formation-enthalpy", limit=int(LIMIT)), splits=("val", "test"))
    fp32 = score(exported / ONNX_FILE, dataset)
    monkeypatch.setattr(export_module, "INT8_TEST_LIMIT", -1.0)  # any test MAE is now too high
    assert quantize_int8(exported / ONNX_FILE, tmp_path / "int8.onnx", dataset, fp32) is None
    assert not (tmp_path / "int8.onnx").exists()
    assert "int8 chosen" in capsys.readouterr().err  # chosen on validation, then refused by the test rule


def test_an_int8_answer_does_not_depend_on_the_rows_sharing_its_call(exported, tmp_path):
    """Per-row activation scales: a formula's int8 answer is the same alone or batched, even next to
    a row whose activations are a hundred times larger (ORT's dynamic int8 fails this)."""
    dataset = load_dataset(DataRequest("oqmd-formation-enthalpy", limit=int(LIMIT)), splits=("test",))
    x = dataset.splits["test"].x[:64]
    quantize_layers(exported / ONNX_FILE, tmp_path / "int8.onnx", 0)  # every layer, the hardest case
    session = onnx_model.session(tmp_path / "int8.onnx")
    alone = np.concatenate([session.run(["y"], {"x": x[i : i + 1]})[0] for i in range(len(x))])
    together = session.run(["y"], {"x": x})[0]
    with_outlier = session.run(["y"], {"x": np.concatenate([x, 100 * x[:1]])})[0][: len(x)]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(with_outlier, alone)
    float32 = onnx_model.session(exported / ONNX_FILE).run(["y"], {"x": x})[0]
    assert not np.array_equal(alone, float32)  # it is int8 arithmetic, not a float copy
    assert np.abs(alone - float32).max() < 0.1 * np.abs(float32).max()


def test_int8_weights_leave_room_for_avx2s_int16_pair_sums():
    """ORT's u8s8 kernel on AVX2 without VNNI adds two uint8 x int8 products in int16: with 8-bit
    weights 2 x 255 x 127 overflows it and the file answers wrongly on such CPUs only (seen: signs
    flipped), so the weights keep 7 bits whatever machine exports them."""
    from training.row_int8 import quantize_weight

    weight = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    quantized, scales = quantize_weight(weight)
    assert 2 * 255 * int(np.abs(quantized.astype(np.int32)).max()) <= np.iinfo(np.int16).max
    assert np.abs(quantized).max() == 63  # the full 7 bits are used
    assert np.abs(quantized * scales - weight).max() <= scales.max() / 2 + 1e-6
