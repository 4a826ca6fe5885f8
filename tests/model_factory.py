"""Tiny but real models for tests: ONNX graphs built with onnx.helper, complete model.json.

Each model is a two-layer MLP over the real EF featurizer width (86 inputs, input ``x``,
output ``y``), with weights drawn from a seed, so a test can compute the expected prediction
with numpy from the same file and compare it with what the service answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.chemistry.featurizers import get_featurizer
from app.inference.manifest import (
    ONNX_FILE,
    Architecture,
    DatasetInfo,
    FeatureSpec,
    IntervalCalibration,
    ModelManifest,
    Output,
    SplitMetrics,
    TrainingDomain,
    TrainingInfo,
    file_sha256,
)
from app.inference.registry import ModelRegistry

HIDDEN = 16
LEAKY_SLOPE = 0.3


def build_graph(seed: int, *, ensemble: bool, width: int, salt: str = "") -> onnx.ModelProto:
    """y = W2 · leaky_relu(W1 · x + b1) + b2, and for an ensemble a second column |W3 · h| (the "std")."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 1, (width, HIDDEN)).astype(np.float32),
        "b1": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "w2": rng.normal(0, 0.5, (HIDDEN, 1)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 1).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["xw1"]),
        helper.make_node("Add", ["xw1", "b1"], ["pre"]),
        helper.make_node("LeakyRelu", ["pre"], ["h"], alpha=LEAKY_SLOPE),
        helper.make_node("MatMul", ["h", "w2"], ["hw2"]),
    ]
    if ensemble:
        weights["w3"] = rng.normal(0, 0.2, (HIDDEN, 1)).astype(np.float32)
        nodes += [
            helper.make_node("Add", ["hw2", "b2"], ["mean"]),
            helper.make_node("MatMul", ["h", "w3"], ["hw3"]),
            helper.make_node("Abs", ["hw3"], ["std"]),
            helper.make_node("Concat", ["mean", "std"], ["y"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Add", ["hw2", "b2"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2 if ensemble else 1])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    # The salt changes the file (so its hash and model version) without changing its answers:
    # a shared PostgreSQL cache then never holds rows from an earlier test run for this version.
    model.doc_string = f"tiny test MLP, seed {seed} {salt}".strip()
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# The 90% interval a Gaussian sigma would have: what the served interval of the test ensemble uses.
ENSEMBLE_INTERVAL = IntervalCalibration(level=0.9, scale=1.645)


def write_model(
    model_dir: Path,
    *,
    property_name: str,
    unit: str,
    seed: int,
    ensemble: bool = False,
    name: str | None = None,
    salt: str = "",
    elements_are_zero: bool = False,
    domain: TrainingDomain | None = None,
) -> ModelManifest:
    """A complete model folder (model.onnx + model.json) the registry accepts."""
    featurizer = get_featurizer("ef")
    model_dir.mkdir(parents=True, exist_ok=True)
    graph = build_graph(seed, ensemble=ensemble, width=featurizer.width, salt=salt)
    onnx.save(graph, model_dir / ONNX_FILE)
    parameters = sum(int(np.prod(init.dims)) for init in graph.graph.initializer)
    manifest = ModelManifest(
        name=name or model_dir.name,
        property=property_name,
        unit=unit,
        description=f"test model (seed {seed})",
        features=FeatureSpec(
            spec="ef", version=featurizer.version, width=featurizer.width, elements=list(featurizer.labels)
        ),
        architecture=Architecture(name="tiny-mlp", parameters=parameters, config={"hidden": HIDDEN}),
        output=Output(
            kind="ensemble" if ensemble else "point",
            members=5 if ensemble else 1,
            interval=ENSEMBLE_INTERVAL if ensemble else None,
            elements_are_zero=elements_are_zero,
        ),
        dataset=DatasetInfo(name="synthetic", source="tests/model_factory.py", sizes={"train": 0}, sha256={}),
        metrics={"test": SplitMetrics(mae=0.0, rmse=0.0, r2=0.0, n=0)},
        training=TrainingInfo(command="tests/model_factory.py", seed=seed),
        onnx_sha256=file_sha256(model_dir / ONNX_FILE),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        domain=domain,
    )
    manifest.save(model_dir)
    return manifest


def reference_outputs(model_dir: Path, features: np.ndarray) -> np.ndarray:
    """The model's answer computed with numpy from the weights stored in its ONNX file: [n, 2]."""
    graph = onnx.load(model_dir / ONNX_FILE).graph
    w = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in graph.initializer}
    pre = features.astype(np.float64) @ w["w1"] + w["b1"]
    hidden = np.where(pre > 0, pre, LEAKY_SLOPE * pre)
    out = np.full((features.shape[0], 2), np.nan)
    out[:, 0] = (hidden @ w["w2"] + w["b2"])[:, 0]
    if "w3" in w:
        out[:, 1] = np.abs(hidden @ w["w3"])[:, 0]
    return out


# The models most tests serve: two point models and one ensemble.
STANDARD_MODELS = (
    {"property_name": "formation_enthalpy", "unit": "eV/atom", "seed": 1, "name": "oqmd-formation-enthalpy"},
    {"property_name": "band_gap", "unit": "eV", "seed": 2, "name": "oqmd-band-gap"},
    {
        "property_name": "volume_per_atom",
        "unit": "Å³/atom",
        "seed": 3,
        "ensemble": True,
        "name": "oqmd-volume-ens",
    },
)


def write_standard_models(models_dir: Path, salt: str = "") -> dict[str, Path]:
    """property -> model folder, for the three STANDARD_MODELS."""
    folders = {}
    for spec in STANDARD_MODELS:
        folder = models_dir / str(spec["name"])
        write_model(folder, salt=salt, **spec)  # type: ignore[arg-type]
        folders[str(spec["property_name"])] = folder
    return folders


def load_registry(models_dir: Path, **overrides: object) -> ModelRegistry:
    """The registry as the service loads it, with test-sized threads and warm-up."""
    options: dict[str, object] = {
        "device": "cpu",
        "intra_op_threads": 1,
        "prefer_int8_on_cpu": False,
        "warmup_rows": 16,
        **overrides,
    }
    return ModelRegistry.load(models_dir, **options)  # type: ignore[arg-type]


# Li and O at 0 (implied), Li2O at -2.0 (x_O = 1/3), Li2O2 at -1.4 (x_O = 1/2). On paper the hull
# runs Li (0, 0) -> Li2O (1/3, -2.0) -> O (1, 0); at x_O = 1/2 it is -2.0 + (1/6)/(2/3) * 2 = -1.5,
# so Li2O2 lies 0.1 eV/atom above it and decomposes into 3/4 Li2O + 1/4 O2 (shares of atoms).
PAPER_REFERENCE = "formula,formation_energy\nLi2O,-2.0\nLi2O2,-1.4\nO,0\n"


def write_paper_reference(folder: Path) -> Path:
    path = folder / "li-o.csv"
    path.write_text(PAPER_REFERENCE)
    return path
