"""``ibrnet export RUN_DIR... --out MODEL_DIR``: ONNX + model.json, checked against PyTorch.

One run gives a point model (y [n, 1]); several runs on the same data and features give an
ensemble (y [n, 2] = mean and standard deviation over members). The exported file must agree
with PyTorch on 1,000 real inputs, and the manifest's metrics are computed through ONNX Runtime
on that very file, so they are what the service will deliver. An ensemble's metrics add the
calibration of its standard deviation (share within 1 and 2 sigma, Spearman rho of sigma and
|error|). ``--weights fp16`` stores the weight matrices as float16 (half the bytes; see
training/fp16.py): the manifest then scores that file and records the fp32 file's size and
metrics beside it, so the cost in accuracy is on record.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from app.inference.manifest import (
    INT8_ONNX_FILE,
    ONNX_FILE,
    Architecture,
    DatasetInfo,
    FeatureSpec,
    IntervalCalibration,
    ModelManifest,
    Output,
    SplitMetrics,
    TrainingInfo,
    Variant,
    file_sha256,
)
from training import calibration, fp16, intervals, onnx_model, row_int8, stability
from training.data import Dataset, load_dataset
from training.datasets import ZERO_FOR_ELEMENTS
from training.domain import domain_of_request
from training.member_weights import equal_weights, fitted_weights
from training.metrics import calibration_metrics, prediction_metrics
from training.nets import Ensemble, HeadedNet, combine, count_parameters
from training.run_config import RunConfig, TrainConfig
from training.run_dir import load_best_model
from training.train import command_line, predict

OPSET = 17
PARITY_ROWS = 1000
PARITY_TOLERANCE = 1e-4  # max |ONNX - PyTorch| on real inputs, in the target's unit

ARCHITECTURE_CITATIONS: dict[str, str] = {
    "ibrnet": "iBRNet: V. Gupta et al., 'Simultaneously improving accuracy and computational cost under "
    "parametric constraints in materials property prediction tasks', J. Cheminform. 16 (2024), "
    "doi:10.1186/s13321-024-00811-6.",
    "brnet": "BRNet: V. Gupta, A. Peltekian, W.-k. Liao, A. Choudhary, A. Agrawal, 'Improving deep "
    "learning model performance under parametric constraints for materials informatics applications', "
    "Sci. Rep. 13, 9128 (2023); first presented as 'BRNet: Branched residual network for fast and "
    "accurate predictive modeling of materials properties', SIAM International Conference on Data "
    "Mining (2022).",
    "irnet": "IRNet: D. Jha, L. Ward, Z. Yang, C. Wolverton, I. Foster, W.-k. Liao, A. Choudhary, "
    "A. Agrawal, 'Enabling deeper learning on big data for materials informatics applications', "
    "Sci. Rep. 11, 4244 (2021).",
    "elemnet": "ElemNet: D. Jha, L. Ward, A. Paul, W.-k. Liao, A. Choudhary, C. Wolverton, A. Agrawal, "
    "'ElemNet: Deep learning the chemistry of materials from only elemental composition', "
    "Sci. Rep. 8, 17593 (2018).",
    "attention": "Element attention after CrabNet (A. Y.-T. Wang, S. K. Kauwe, R. J. Murdock, T. D. "
    "Sparks, 'Compositionally restricted attention-based network for materials property predictions', "
    "npj Comput. Mater. 7, 77 (2021)) and Roost (R. E. A. Goodall, A. A. Lee, 'Predicting materials "
    "properties without crystal structure: deep representation learning from stoichiometry', Nat. "
    "Commun. 11, 6280 (2020)).",
}
PA_CITATION = (
    "Physical attributes: L. Ward, A. Agrawal, A. Choudhary, C. Wolverton, 'A general-purpose "
    "machine learning framework for predicting properties of inorganic materials', "
    "npj Comput. Mater. 2, 16028 (2016)."
)


class ParityError(RuntimeError):
    """The ONNX file does not compute what the PyTorch network computes."""


def write_onnx(module: torch.nn.Module, width: int, path: Path) -> None:
    module.eval()
    example = torch.zeros(2, width, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module, (example,), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)))


def parity_inputs(dataset: Dataset, rows: int = PARITY_ROWS) -> np.ndarray:
    """Real feature vectors: test rows first, then validation rows, up to ``rows``."""
    x = np.concatenate([dataset.splits["test"].x[:rows], dataset.splits["val"].x[:rows]])
    return x[:rows]


def check_parity(module: torch.nn.Module, path: Path, x: np.ndarray) -> float:
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    actual = onnx_model.predict(onnx_model.session(path), x)
    worst = float(np.max(np.abs(actual - expected))) if len(x) else 0.0
    if actual.shape != expected.shape or not worst <= PARITY_TOLERANCE:
        raise ParityError(
            f"{path}: ONNX and PyTorch differ by {worst:.3g} (shape {actual.shape} vs {expected.shape}) "
            f"on {len(x)} real inputs; the limit is {PARITY_TOLERANCE}"
        )
    return worst


def score(
    path: Path,
    dataset: Dataset,
    splits: tuple[str, ...] = ("val", "test"),
    *,
    interval: IntervalCalibration | None = None,
    floor: float | None = None,
) -> dict[str, SplitMetrics]:
    model = onnx_model.session(path)
    return {
        split: SplitMetrics(**prediction_metrics(dataset.splits[split].y,
                                                 onnx_model.predict(model, dataset.splits[split].x),
                                                 interval, floor))
        for split in splits
    }  # fmt: skip


def load_members(
    run_dirs: list[Path], command: str = "ibrnet export"
) -> tuple[list[RunConfig], list[torch.nn.Module]]:
    """Each run's config and best-epoch network; refused unless they share data and features (their
    architectures may differ), and a student with heads only alone."""
    configs, models = [], []
    for run_dir in run_dirs:
        config, model = load_best_model(run_dir)
        configs.append(config)
        models.append(model)
    first = configs[0]
    for run_dir, config in zip(run_dirs[1:], configs[1:], strict=True):
        for key in ("data", "features"):
            if getattr(config, key) != getattr(first, key):
                raise SystemExit(f"{command}: {run_dir} was trained on different {key} than {run_dirs[0]}")
    for run_dir, config in zip(run_dirs, configs, strict=True):
        if len(configs) > 1 and config.net.heads > 1:
            raise SystemExit(f"{command}: {run_dir} is a student with heads, already an ensemble of "
                             "its own; it cannot be one member of another")  # fmt: skip
    return configs, models


def _architecture(configs: list[RunConfig], module: torch.nn.Module) -> Architecture:
    """The network's shape; an ensemble of different architectures (e.g. iBRNets and an attention
    network: their errors differ more than seeds' do) also records each member's, so that
    ``--init-from`` and ``--teacher`` rebuild every member from the file."""
    nets = [_net_record(config) for config in configs]
    arches = dict.fromkeys(config.train.arch for config in configs)
    differ = any(net != nets[0] for net in nets)
    return Architecture(name="+".join(arches), parameters=count_parameters(module), config=nets[0],
                        members=nets if differ else None)  # fmt: skip


def _net_record(config: RunConfig) -> dict[str, Any]:
    net = {k: v for k, v in config.net.to_dict().items() if k not in ("input_mean", "input_std")}
    net["input_standardisation"] = (
        "train-split mean/std baked into the model (identity on elemental fractions)"
    )
    return net


def _training(configs: list[RunConfig], export_command: str) -> TrainingInfo:
    first, result = configs[0], configs[0].result
    members = [
        {"arch": c.train.arch, "seed": c.train.seed, "command": c.command, "hardware": c.hardware,
         "precision": c.train.precision,
         **(asdict(c.result) if c.result else {})}
        for c in configs
    ]  # fmt: skip
    return TrainingInfo(
        command=" && ".join(c.command for c in configs),
        seed=first.train.seed,
        epochs=result.epochs_completed if result else None,
        best_epoch=result.best_epoch if result else None,
        wall_time_s=sum(c.result.wall_time_s for c in configs if c.result),
        hardware=" + ".join(dict.fromkeys(c.hardware for c in configs)),  # each distinct one once
        export_command=export_command,
        hyperparameters={
            **{k: getattr(first.train, k) for k in (
                "batch_size", "lr", "patience_es", "patience_rlrop", "rlrop_factor", "min_lr", "epochs")},
            "precision": first.train.precision,
            **_heads_recipe(first.train),
        },
        loss="mean absolute error" + (STUDENT_LOSS if first.train.teacher else ""),
        optimizer="Adam" + (" + ReduceLROnPlateau" if first.train.uses_rlrop else "")
        + " + EarlyStopping (best weights restored)",
        members=members if len(configs) > 1 else None,
        # early_stopping | time_limit | signal (stopped by hand) | max_epochs; best weights either way
        stop_reason=result.stop_reason if result else None,
        started_from=_source_model(first.train.init_from),
        # the ensemble a student was distilled from, with its validation MAE: the figure the 1%
        # shipping rule compares with (read at export, while the teacher is still in place)
        distilled_from=_source_model(first.train.teacher),
    )  # fmt: skip


def _source_model(path: str | None) -> dict[str, Any] | None:
    """A model a run learned from (--init-from, --teacher) and how that one was made: the chain
    stays on record even when that model is no longer shipped (a first-stage student, a teacher)."""
    if not path:
        return None
    folder = Path(path.partition("#")[0])
    try:
        source = ModelManifest.load(folder)
    except (OSError, ValueError):
        return {"model": path}
    return {"model": path, "name": source.name, "version": source.version,
            "command": source.training.command, "metrics_val_mae": source.metrics["val"].mae}  # fmt: skip


STUDENT_LOSS = " (heads vs the teacher's members, their spread, the mean vs the target)"


def _heads_recipe(train: TrainConfig) -> dict[str, Any]:
    """How a student's or grown heads' training differed from a plain run's (none: {})."""
    if train.teacher:
        keys: tuple[str, ...] = ("teacher", "init_from", "head_units", "transfer_extra", "spread_weight")
    elif train.heads > 1:
        keys = ("init_from", "heads", "head_units")
    else:
        return {}
    return {key: getattr(train, key) for key in keys}


def export(run_dirs: list[Path], out_dir: Path, *, name: str | None = None, quantize: str | None = None,
           weights: str = "fp32", member_weights: str = "equal",
           command: str = "") -> ModelManifest:  # fmt: skip
    configs, models = load_members(run_dirs)
    first = configs[0]
    dataset = load_dataset(first.data, splits=("val", "test"))
    fit_weights = member_weights == "fitted"
    if len(models) > 1:
        module: torch.nn.Module = calibrated_ensemble(models, dataset, fit_weights=fit_weights)
    elif isinstance(models[0], HeadedNet):
        module = calibrated_student(models[0], dataset)
    else:
        module = models[0]
    with_sigma = isinstance(module, Ensemble | HeadedNet)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    write_onnx(module, first.features.width, onnx_path)
    try:
        worst = check_parity(module, onnx_path, parity_inputs(dataset))
    except ParityError:
        onnx_path.unlink()  # never leave a file behind that computes something else
        raise
    print(f"parity: max |ONNX - PyTorch| = {worst:.2e} on {min(PARITY_ROWS, len(parity_inputs(dataset)))} "
          f"real inputs", file=sys.stderr)  # fmt: skip
    metrics = score(onnx_path, dataset)
    variants: dict[str, Variant] = {}
    if quantize == "int8":  # from the float32 file: dynamic quantization needs float32 weights
        int8 = quantize_int8(onnx_path, out_dir / INT8_ONNX_FILE, dataset, metrics)
        if int8 is not None:
            variants["int8"] = int8
    storage: dict[str, Any] = {"storage": "float32"}
    if weights == "fp16":
        metrics, storage = store_fp16(onnx_path, dataset, metrics)
    floor = first.net.target_floor
    interval = None
    if with_sigma:  # fitted on the file as served (after any fp16 rewrite), validation only
        interval = intervals.fit_on_file(onnx_path, dataset)
        metrics = score(onnx_path, dataset, interval=interval, floor=floor)
    info = {
        k: v for k, v in first.dataset.items() if k not in ("property", "unit", "description", "citations")
    }
    features = first.features
    elements_are_zero = first.dataset["property"] in ZERO_FOR_ELEMENTS
    architecture = _architecture(configs, module)  # its name: the members' architectures, joined by +
    citations = [
        *first.dataset["citations"],  # the data's, --add-train's included (members share their data)
        *(ARCHITECTURE_CITATIONS[a] for a in architecture.name.split("+")),
    ]
    if "pa" in features.spec:
        citations.append(PA_CITATION)
    teacher = first.train.teacher
    members = len(models) if len(models) > 1 else first.net.heads
    shape = f", ensemble of {members}" if len(models) > 1 else ""
    if teacher:
        shape = f", one network with {members} heads distilled from {Path(teacher).name}"
    elif first.net.heads > 1:
        shape = f", one network with {members} heads"
    manifest = ModelManifest(
        name=name or out_dir.resolve().name,
        property=first.dataset["property"],
        unit=first.dataset["unit"],
        description=f"{architecture.name} ({features.spec} features{shape}): {first.dataset['description']}",
        features=FeatureSpec(
            spec=features.spec, version=features.version, width=features.width, elements=features.elements
        ),
        architecture=architecture,
        output=Output(
            kind="ensemble",
            members=members,
            sigma_scale=float(module.sigma_scale),
            member_weights=[round(float(w), 6) for w in module.member_weights.flatten()],
            member_weights_fit="teacher" if teacher else member_weights,
            interval=interval,
            elements_are_zero=elements_are_zero,
        )
        if with_sigma
        else Output(elements_are_zero=elements_are_zero),
        dataset=DatasetInfo(**info),
        metrics=metrics,
        training=_training(configs, command),
        onnx_sha256=file_sha256(onnx_path),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        citations=citations,
        parity={"rows": len(parity_inputs(dataset)), "max_abs_diff": worst, "tolerance": PARITY_TOLERANCE},
        onnx_opset=OPSET,
        variants=variants,
        weights=storage,
        domain=domain_of_request(first.data),
    )
    manifest.save(out_dir)
    if with_sigma and first.data.data == stability.CRITEXAM_DATASET:
        # A model behind e_above_hull: p_stable's curve, fitted on the file as served (validation only).
        manifest.stability = stability.fit_calibration(out_dir)
        manifest.save(out_dir)
        print(f"p_stable: {len(manifest.stability.gaussian)}-knot isotonic curve on "
              f"{manifest.stability.calibration_rows} validation compounds", file=sys.stderr)  # fmt: skip
    return manifest


def member_outputs(models: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Every member's prediction for every row, [k, n, 1] (what Ensemble.combine takes)."""
    return torch.stack([predict(m, x, TrainConfig.eval_batch_size) for m in models]).unsqueeze(2)


def calibrated_ensemble(
    models: list[torch.nn.Module], dataset: Dataset, *, fit_weights: bool = False
) -> Ensemble:
    """The members as one Ensemble whose sigma is scaled to one validation sigma; with fit_weights,
    its mean weighted to the lowest validation MAE (training/member_weights.py)."""
    ensemble = Ensemble(models)
    val = dataset.splits["val"]
    # each member runs over validation once ([k, n, 1]); the weights and the scale both come from that
    stacked = member_outputs(models, torch.from_numpy(val.x))
    if fit_weights:
        each = stacked.double().numpy()[:, :, 0]
        weights = fitted_weights(each, val.y)
        ensemble.member_weights.copy_(torch.from_numpy(weights).float().view(-1, 1, 1))
        fitted, equal = (np.abs(w @ each - val.y).mean() for w in (weights, equal_weights(len(models))))
        print(f"member weights fitted on validation: {', '.join(f'{w:.3f}' for w in weights)}; "
              f"validation MAE {fitted:.5f} (equal weights: {equal:.5f})", file=sys.stderr)  # fmt: skip
    return scale_sigma(ensemble, stacked, val.y)


def calibrated_student(student: HeadedNet, dataset: Dataset) -> HeadedNet:
    """A distilled student whose heads' spread is scaled to one validation sigma (its mean weights are
    the teacher's, fixed in training)."""
    val = dataset.splits["val"]
    with torch.no_grad():
        stacked = torch.cat([student.each_head(torch.from_numpy(val.x[i : i + 8192]))
                             for i in range(0, len(val.y), 8192)], dim=1)  # fmt: skip
    return scale_sigma(student, stacked, val.y)


def scale_sigma(module: Ensemble | HeadedNet, stacked: torch.Tensor, target: np.ndarray) -> Any:
    """Set ``module.sigma_scale`` so that 68.3% of validation rows lie within one served sigma."""
    module.sigma_scale.fill_(1.0)
    with torch.no_grad():
        raw = combine(stacked, module.member_weights, module.sigma_scale).double().numpy()
    mean, std = raw[:, 0], raw[:, 1]
    scale = calibration.sigma_scale(target, mean, std)
    module.sigma_scale.fill_(scale)
    raw_share = calibration_metrics(target, mean, std)["within_1_sigma"]
    print(f"uncertainty: {100 * raw_share:.1f}% of validation rows within one raw sigma; "
          f"sigma scaled by {scale:.3f} for 68.3%", file=sys.stderr)  # fmt: skip
    return module


def store_fp16(
    path: Path, dataset: Dataset, fp32: dict[str, SplitMetrics]
) -> tuple[dict[str, SplitMetrics], dict[str, Any]]:
    """Rewrite ``path`` with float16 weight storage; its metrics, and what it cost against fp32."""
    fp32_bytes = path.stat().st_size
    x = parity_inputs(dataset)
    before = onnx_model.predict(onnx_model.session(path), x)
    converted = fp16.convert(path, path)
    after = onnx_model.predict(onnx_model.session(path), x)
    worst = float(np.max(np.abs(after - before))) if len(x) else 0.0
    metrics = score(path, dataset)
    delta = {split: metrics[split].mae - fp32[split].mae for split in metrics}
    size = path.stat().st_size
    print(f"fp16 weights: {size / 1e6:.1f} MB vs fp32 {fp32_bytes / 1e6:.1f} MB; test MAE "
          f"{metrics['test'].mae:.5f} vs fp32 {fp32['test'].mae:.5f} (delta {delta['test']:+.2e}, "
          f"{100 * delta['test'] / fp32['test'].mae:+.3f}%); max |fp16 - fp32| {worst:.2e} on {len(x)} "
          f"real inputs", file=sys.stderr)  # fmt: skip
    return metrics, {
        "storage": "float16",
        "computation": "float32 (float16 weights are Cast to float32 when the session loads)",
        "converted_initializers": converted,
        "bytes": size,
        "fp32_bytes": fp32_bytes,
        "fp32_metrics": {split: m.model_dump(exclude_none=True) for split, m in fp32.items()},
        "mae_delta_vs_fp32": delta,
        "max_abs_diff_vs_fp32": worst,
        "rows_compared": len(x),
    }


# Layers with at least this many weights are candidates for int8, tried from "every layer" up.
# The wide layers next to the input carry most of the arithmetic and tolerate int8; the narrow
# layers next to the output carry little of it and most of the error (shipped formation-enthalpy
# iBRNet, validation MAE: every layer int8 +16.4%, only layers >= 2**18 weights +0.8%).
INT8_MIN_LAYER_WEIGHTS = (0, 2**16, 2**17, 2**18, 2**19, 2**20)
# The most-quantized candidate whose VALIDATION MAE is within this of float32 is chosen (test is
# never looked at); none within it -> no int8 variant is written.
INT8_VAL_TOLERANCE = 0.01
# The release rule (issue 4): a variant whose TEST MAE is more than this above float32's is not
# written. Applied after the choice, so it can only refuse a variant, never pick one.
INT8_TEST_LIMIT = 0.02


def layer_weights(path: Path) -> dict[str, int]:
    """Weights of each dense layer (Gemm/MatMul node name -> size of its weight matrix)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    return {
        node.name: max(sizes.get(name, 0) for name in node.input)
        for node in graph.node
        if node.op_type in ("Gemm", "MatMul")
    }


def quantize_layers(source: Path, target: Path, min_weights: int) -> int:
    """int8 for the layers with >= ``min_weights`` weights, one activation scale per row so that a
    row's answer never depends on its batch (training/row_int8.py); returns how many layers."""
    return row_int8.rewrite(source, target, min_weights)


def quantize_int8(
    source: Path, target: Path, dataset: Dataset, fp32: dict[str, SplitMetrics]
) -> Variant | None:
    """The most-quantized candidate within INT8_VAL_TOLERANCE of float32 on validation, or None."""
    layers = layer_weights(source)
    allowed = fp32["val"].mae * (1 + INT8_VAL_TOLERANCE)
    for min_weights in INT8_MIN_LAYER_WEIGHTS:
        if not any(size >= min_weights for size in layers.values()):
            break
        quantized = quantize_layers(source, target, min_weights)
        val = score(target, dataset, ("val",))["val"]
        share = sum(s for s in layers.values() if s >= min_weights) / sum(layers.values())
        print(f"int8, layers >= {min_weights:,} weights ({quantized} of {len(layers)} layers, "
              f"{100 * share:.0f}% of the weights): val MAE {val.mae:.5f} vs fp32 {fp32['val'].mae:.5f} "
              f"({100 * (val.mae / fp32['val'].mae - 1):+.2f}%)", file=sys.stderr)  # fmt: skip
        if val.mae <= allowed:
            metrics = {"val": val, **score(target, dataset, ("test",))}  # val is already scored
            delta = metrics["test"].mae / fp32["test"].mae - 1
            print(f"int8 chosen: test MAE {metrics['test'].mae:.5f} vs fp32 {fp32['test'].mae:.5f} "
                  f"({100 * delta:+.2f}%)", file=sys.stderr)  # fmt: skip
            if delta > INT8_TEST_LIMIT:
                target.unlink()
                print(f"int8: the test MAE is more than {100 * INT8_TEST_LIMIT:.0f}% above float32's; "
                      "no int8 variant written", file=sys.stderr)  # fmt: skip
                return None
            return Variant(
                file=target.name,
                sha256=file_sha256(target),
                quantization="int8",
                metrics=metrics,
                min_layer_weights=min_weights,
                quantized_layers=quantized,
                layers=len(layers),
            )
    target.unlink(missing_ok=True)
    print(f"int8: no candidate within {100 * INT8_VAL_TOLERANCE:.0f}% of the float32 validation MAE; "
          "no int8 variant written", file=sys.stderr)  # fmt: skip
    return None


def run(args: argparse.Namespace) -> int:
    run_dirs = [Path(p) for p in (args.run_dir if isinstance(args.run_dir, list) else [args.run_dir])]
    out = Path(args.out)
    manifest = export(
        run_dirs,
        out,
        name=args.name,
        quantize=args.quantize,
        weights=getattr(args, "weights", None) or "fp32",
        member_weights=getattr(args, "member_weights", None) or "equal",
        command=command_line(args, "export"),
    )
    test = manifest.metrics["test"]
    print(f"{out}: {manifest.name} version {manifest.version}, test MAE {test.mae:.5f} {manifest.unit} "
          f"(RMSE {test.rmse:.5f}, R2 {test.r2:.4f}, n {test.n})")  # fmt: skip
    for split, m in manifest.metrics.items():
        if m.within_1_sigma is not None:
            print(f"{split} calibration: {100 * m.within_1_sigma:.1f}% within 1 sigma, "
                  f"{100 * (m.within_2_sigma or 0):.1f}% within 2 sigma, "
                  f"Spearman rho(sigma, |error|) {m.sigma_error_spearman:.3f}")  # fmt: skip
    return 0
