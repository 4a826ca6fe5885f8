"""ModelRegistry: verified, warmed-up ORT sessions; a bad folder is skipped with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.errors import DomainError
from app.inference.manifest import ONNX_FILE, ModelManifest, Variant, file_sha256
from app.inference.registry import CUDA_PROVIDER
from tests.model_factory import build_graph, load_registry, reference_outputs, write_model


def test_loads_every_model_with_version_provider_and_elements(registry, standard_models):
    _, folders = standard_models
    assert registry.failures == {}
    assert sorted(registry.by_property) == sorted(folders)
    for prop, folder in folders.items():
        model = registry.get(prop)
        assert model.version == file_sha256(folder / ONNX_FILE)[:12] == model.manifest.version
        assert model.provider == "CPUExecutionProvider"
        assert model.session.get_providers() == ["CPUExecutionProvider"]
        assert model.elements == get_featurizer("ef").elements
        assert model.directory == folder


def test_run_returns_value_and_uncertainty_columns(registry, standard_models):
    _, folders = standard_models
    formulas = [parse_formula(text) for text in ("NaCl", "Fe2O3", "LiFePO4", "CsPbI3")]
    features = get_featurizer("ef").transform(formulas)
    for prop, folder in folders.items():
        out = registry.get(prop).run(features)
        expected = reference_outputs(folder, features)
        assert out.shape == (4, 2) and out.dtype == np.float32
        np.testing.assert_allclose(out[:, 0], expected[:, 0], rtol=1e-5, atol=1e-5)
        if registry.get(prop).manifest.output.kind == "ensemble":
            np.testing.assert_allclose(out[:, 1], expected[:, 1], rtol=1e-5, atol=1e-5)
        else:
            assert np.isnan(out[:, 1]).all()
    assert registry.get("band_gap").run(np.empty((0, 86), np.float32)).shape == (0, 2)


def test_threads_are_set_explicitly(standard_models):
    registry = load_registry(standard_models[0], intra_op_threads=2)
    options = registry.get("band_gap").session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1


def test_unknown_property_is_a_domain_error(registry):
    with pytest.raises(DomainError) as caught:
        registry.get("superconductivity")
    assert caught.value.code == "unknown_property"
    assert "superconductivity" in caught.value.message
    assert registry.resolve(None) == registry.models
    assert [m.property for m in registry.resolve(["band_gap", "band_gap"])] == ["band_gap"]


def copy_model(standard_models, tmp_path: Path, name: str = "oqmd-band-gap") -> Path:
    target = tmp_path / "models" / name
    shutil.copytree(standard_models[0] / name, target)
    return target


def rewrite_manifest(folder: Path, **changes: object) -> None:
    manifest = ModelManifest.load(folder)
    manifest.model_copy(update=changes).save(folder)


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("tampered", "does not match the manifest"),
        ("missing_onnx", "model.onnx is missing"),
        ("narrow_input", "expected [n, 86]"),
        ("ensemble_claim", "for a ensemble model"),
        ("featurizer_version", "featurizer ef version 999"),
        ("element_order", "element order"),
        ("bad_manifest", "ValidationError"),
    ],
)
def test_a_broken_folder_is_skipped_with_its_reason(standard_models, tmp_path, breakage, reason):
    copy_model(standard_models, tmp_path, "oqmd-formation-enthalpy")  # a good neighbour
    folder = copy_model(standard_models, tmp_path)
    onnx_path = folder / ONNX_FILE
    manifest = ModelManifest.load(folder)
    if breakage == "tampered":
        onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    elif breakage == "missing_onnx":
        onnx_path.unlink()
    elif breakage == "narrow_input":
        onnx.save(build_graph(5, ensemble=False, width=50), onnx_path)
        rewrite_manifest(folder, onnx_sha256=file_sha256(onnx_path))
    elif breakage == "ensemble_claim":
        rewrite_manifest(folder, output=manifest.output.model_copy(update={"kind": "ensemble"}))
    elif breakage == "featurizer_version":
        rewrite_manifest(folder, features=manifest.features.model_copy(update={"version": "999"}))
    elif breakage == "element_order":
        elements = list(reversed(manifest.features.elements))
        rewrite_manifest(folder, features=manifest.features.model_copy(update={"elements": elements}))
    elif breakage == "bad_manifest":
        (folder / "model.json").write_text('{"name": "half a manifest"}')

    registry = load_registry(tmp_path / "models")
    assert list(registry.failures) == [str(folder)]
    assert reason in registry.failures[str(folder)], registry.failures
    assert list(registry.by_property) == ["formation_enthalpy"]  # the neighbour still serves


def test_two_models_for_one_property_keep_the_first(standard_models, tmp_path):
    copy_model(standard_models, tmp_path, "oqmd-band-gap")
    write_model(tmp_path / "models" / "z-band-gap-2", property_name="band_gap", unit="eV", seed=7)
    registry = load_registry(tmp_path / "models")
    assert registry.get("band_gap").name == "oqmd-band-gap"
    assert "already served" in registry.failures[str(tmp_path / "models" / "z-band-gap-2")]


def test_missing_or_empty_model_directory(tmp_path):
    assert "does not exist" in load_registry(tmp_path / "nowhere").failures[str(tmp_path / "nowhere")]
    (tmp_path / "empty").mkdir()
    assert "no */model.json" in load_registry(tmp_path / "empty").failures[str(tmp_path / "empty")]


@pytest.mark.skipif(CUDA_PROVIDER in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_device_cuda_without_the_cuda_provider_is_refused_not_silently_cpu(standard_models):
    registry = load_registry(standard_models[0], device="cuda")
    assert registry.by_property == {}
    assert all("CUDAExecutionProvider" in reason for reason in registry.failures.values())
    assert load_registry(standard_models[0], device="auto").get("band_gap").provider == "CPUExecutionProvider"


@pytest.mark.skipif(CUDA_PROVIDER not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_provider_answers_when_available(standard_models):  # runs on GPU machines only
    registry = load_registry(standard_models[0], device="cuda")
    assert registry.get("band_gap").provider == CUDA_PROVIDER
    features = get_featurizer("ef").transform([parse_formula("GaAs")])
    expected = reference_outputs(standard_models[1]["band_gap"], features)[0, 0]
    assert registry.get("band_gap").run(features)[0, 0] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_int8_variant_is_preferred_on_cpu_when_asked(standard_models, tmp_path):
    folder = copy_model(standard_models, tmp_path)
    # A stand-in "int8" file: a different graph is enough to show which file answers.
    onnx.save(build_graph(77, ensemble=False, width=86), folder / "model.int8.onnx")
    manifest = ModelManifest.load(folder)
    variant = Variant(
        file="model.int8.onnx", sha256=file_sha256(folder / "model.int8.onnx"), quantization="int8"
    )
    manifest.model_copy(update={"variants": {"int8": variant}}).save(folder)
    manifest = ModelManifest.load(folder)
    plain = load_registry(tmp_path / "models").get("band_gap")
    int8 = load_registry(tmp_path / "models", prefer_int8_on_cpu=True).get("band_gap")
    assert (plain.variant, int8.variant) == ("fp32", "int8")
    assert plain.version == manifest.version
    assert int8.version == manifest.variants["int8"].sha256[:12] != plain.version
