"""Model registry: every ``models/*/model.json``, verified, opened in ONNX Runtime and warmed up.

A model folder that cannot be served (hash mismatch, wrong input width, missing file, unknown
featurizer, ...) is skipped with its reason in ``ModelRegistry.failures``; the others serve.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.chemistry.elements import EF_ELEMENTS
from app.chemistry.featurizers import Featurizer, get_featurizer
from app.chemistry.fingerprint import chemistry_fingerprint
from app.chemistry.formula import ParsedFormula
from app.chemistry.ragged import RaggedBatch
from app.errors import DomainError
from app.inference.manifest import (
    INT8_ONNX_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    ModelManifest,
    file_sha256,
    version_from_sha256,
)
from app.inference.results import Interval, PropertyPrediction

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
INPUT_NAME = "x"
OUTPUT_NAME = "y"


class ModelLoadError(Exception):
    """Why one model folder is not served (recorded in ModelRegistry.failures, shown by /ready)."""


@dataclass(eq=False)
class LoadedModel:
    """One servable model: its manifest, its ORT session and how to feed it."""

    name: str
    directory: Path
    manifest: ModelManifest
    version: str  # derived from the hash of the ONNX file that is actually running
    property: str
    unit: str
    provider: str
    featurizer: Featurizer
    elements: frozenset[str]  # a formula must stay inside this set to be featurized
    variant: str  # "fp32" or "int8"
    session: ort.InferenceSession = field(repr=False)
    warmup_s: float = 0.0

    @property
    def cache_version(self) -> str:
        """The version its predictions are cached under: the model file's, the chemistry's (key
        rules, featurizer tables) and the output rules', so a change to any is a miss, not a stale
        row (an element cached with the network's guess before elements_are_zero)."""
        rules = ".e0" if self.manifest.output.elements_are_zero else ""
        return f"{self.version}.{chemistry_fingerprint()[:12]}{rules}"

    def answer(
        self, value: float, uncertainty: float | None, *, cached: bool, formula: ParsedFormula | None = None
    ) -> PropertyPrediction:
        """A model output (or its cache row) as every caller receives it: no NaN (JSON has none),
        whether ``formula`` lies in the model's training domain, and the calibrated prediction
        interval where the model has an uncertainty and one, in its domain."""
        finite = value if math.isfinite(value) else None
        sigma = uncertainty if uncertainty is not None and math.isfinite(uncertainty) else None
        warning = self.domain_warning(formula) if formula is not None else None
        in_domain = None if formula is None or self.manifest.domain is None else warning is None
        calibration, interval = self.manifest.output.interval, None
        if calibration is not None and finite is not None and sigma is not None and warning is None:
            floor = self.manifest.architecture.config.get("target_floor")
            interval = Interval(*calibration.bounds(finite, sigma, floor), calibration.level)
        return PropertyPrediction(
            finite, self.unit, self.name, self.version, sigma, interval, cached, in_domain, warning
        )

    def domain_warning(self, formula: ParsedFormula) -> dict[str, str] | None:
        """Why ``formula`` is outside the training domain (None: inside, or unknown)."""
        domain = self.manifest.domain
        exact = self.manifest.output.elements_are_zero
        return None if domain is None else domain.warning(formula, exact)

    def in_domain(self, batch: RaggedBatch) -> np.ndarray | None:
        """Per formula of ``batch``: inside the training domain (None: the model records none)."""
        domain = self.manifest.domain
        if domain is None:
            return None
        exact = self.manifest.output.elements_are_zero
        return domain.inside(batch, exact)

    @property
    def answer_version(self) -> str:
        """``cache_version`` and the training domain: what Dask workers must match, since the domain
        decides the answers' in_domain flags and intervals (not the cached values)."""
        domain = self.manifest.domain
        return self.cache_version if domain is None else f"{self.cache_version}.d{domain.digest}"

    def predict(self, features: np.ndarray, element_counts: np.ndarray) -> np.ndarray:
        """``run``, with the answers a model's target fixes by definition (``elements_are_zero``):
        ``element_counts`` [n] is each row's number of elements."""
        out = self.run(features)
        if self.manifest.output.elements_are_zero:
            single = np.asarray(element_counts) == 1
            out[single, 0] = 0.0
            out[single, 1] = np.where(np.isnan(out[single, 1]), np.nan, 0.0)
        return out

    def run(self, features: np.ndarray) -> np.ndarray:
        """float32 [n, width] -> float32 [n, 2]: value, and standard deviation (NaN for a point model)."""
        if features.shape[0] == 0:
            return np.empty((0, 2), dtype=np.float32)
        (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)})
        if y.shape[1] == 2:
            return y
        out = np.full((y.shape[0], 2), np.nan, dtype=np.float32)
        out[:, 0] = y[:, 0]
        return out


@dataclass
class ModelRegistry:
    by_property: dict[str, LoadedModel] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # model folder -> why it was skipped
    models_dir: Path | None = None

    @classmethod
    def load(
        cls,
        models_dir: Path,
        *,
        device: str,
        intra_op_threads: int,
        prefer_int8_on_cpu: bool,
        warmup_rows: int = 1024,
    ) -> ModelRegistry:
        registry = cls(models_dir=models_dir)
        if not models_dir.is_dir():
            registry.failures[str(models_dir)] = "model directory does not exist"
            logger.error("model directory %s does not exist", models_dir)
            return registry
        for model_dir in sorted(path.parent for path in models_dir.glob(f"*/{MANIFEST_FILE}")):
            try:
                model = load_model(
                    model_dir,
                    device=device,
                    intra_op_threads=intra_op_threads,
                    prefer_int8_on_cpu=prefer_int8_on_cpu,
                    warmup_rows=warmup_rows,
                )
                if model.property in registry.by_property:
                    other = registry.by_property[model.property].name
                    raise ModelLoadError(f"property {model.property!r} is already served by model {other!r}")
            except Exception as error:  # one bad folder (any reason) must not stop the others
                reason = (
                    str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
                )
                registry.failures[str(model_dir)] = reason
                logger.error("skipping model %s: %s", model_dir, reason)
                continue
            registry.by_property[model.property] = model
            logger.info(
                "model %s (%s, version %s, %s) on %s, warm-up %.3f s",
                model.name,
                model.property,
                model.version,
                model.variant,
                model.provider,
                model.warmup_s,
            )
        if not registry.by_property and not registry.failures:
            registry.failures[str(models_dir)] = f"no */{MANIFEST_FILE} found"
        return registry

    @property
    def models(self) -> list[LoadedModel]:
        return list(self.by_property.values())

    def get(self, property_name: str) -> LoadedModel:
        try:
            return self.by_property[property_name]
        except KeyError:
            raise DomainError(
                "unknown_property",
                f"unknown property {property_name!r}; "
                f"available: {', '.join(sorted(self.by_property)) or 'none'}",
                property=property_name,
                available=sorted(self.by_property),
            ) from None

    def resolve(self, properties: Sequence[str] | None) -> list[LoadedModel]:
        """The models answering ``properties`` (all of them for None), duplicates dropped."""
        if properties is None:
            return self.models
        return [self.get(name) for name in dict.fromkeys(properties)]


def choose_providers(device: str) -> list[str]:
    """Explicit providers: CUDA only when this onnxruntime build offers it and the setting allows."""
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise ModelLoadError(
            "IBRNET_DEVICE=cuda but onnxruntime offers no CUDAExecutionProvider "
            f"(available: {ort.get_available_providers()}; install onnxruntime-gpu instead of onnxruntime)"
        )
    return [CPU_PROVIDER]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # ORT counts the host's cores, not the container's quota: always say how many threads to use.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads would otherwise spin for a while after each call, taking the CPU away from
    # the event loop that parses and serializes the next requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(
    model_dir: Path, *, device: str, intra_op_threads: int, prefer_int8_on_cpu: bool, warmup_rows: int
) -> LoadedModel:
    manifest = ModelManifest.load(model_dir)
    featurizer = _featurizer_for(manifest)
    providers = choose_providers(device)

    onnx_path, expected_sha256, variant = model_dir / ONNX_FILE, manifest.onnx_sha256, "fp32"
    int8 = manifest.variants.get("int8")
    if prefer_int8_on_cpu and providers[0] == CPU_PROVIDER and int8 is not None:
        onnx_path, expected_sha256, variant = model_dir / (int8.file or INT8_ONNX_FILE), int8.sha256, "int8"
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path.name} is missing")
    actual_sha256 = file_sha256(onnx_path)
    if actual_sha256 != expected_sha256:
        raise ModelLoadError(
            f"{onnx_path.name} sha256 {actual_sha256[:12]}… "
            f"does not match the manifest's {expected_sha256[:12]}…"
        )

    session = ort.InferenceSession(
        str(onnx_path), sess_options=session_options(intra_op_threads), providers=providers
    )
    provider = session.get_providers()[0]
    if device == "cuda" and provider != CUDA_PROVIDER:
        raise ModelLoadError(f"IBRNET_DEVICE=cuda but the session runs on {provider}")
    _check_signature(session, featurizer.width, manifest)

    model = LoadedModel(
        name=manifest.name,
        directory=model_dir,
        manifest=manifest,
        version=version_from_sha256(actual_sha256),
        property=manifest.property,
        unit=manifest.unit,
        provider=provider,
        featurizer=featurizer,
        elements=frozenset(manifest.features.elements) & featurizer.elements,
        variant=variant,
        session=session,
    )
    model.warmup_s = _warm_up(model, warmup_rows)
    return model


def _featurizer_for(manifest: ModelManifest) -> Featurizer:
    spec = manifest.features
    try:
        featurizer = get_featurizer(spec.spec)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    if spec.version != featurizer.version:
        raise ModelLoadError(
            f"trained with featurizer {spec.spec} version {spec.version}, "
            f"this service has version {featurizer.version}"
        )
    if spec.width != featurizer.width:
        raise ModelLoadError(
            f"manifest says {spec.width} features, featurizer {spec.spec} makes {featurizer.width}"
        )
    if spec.spec == "ef" and tuple(spec.elements) != EF_ELEMENTS:
        # The EF columns are positional: another order would feed every element into the wrong input.
        raise ModelLoadError("manifest's element order differs from the EF featurizer's")
    return featurizer


def _check_signature(session: ort.InferenceSession, width: int, manifest: ModelManifest) -> None:
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name: node for node in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    input_shape = inputs[INPUT_NAME].shape
    if len(input_shape) != 2 or input_shape[1] != width:
        raise ModelLoadError(f"input {INPUT_NAME!r} has shape {input_shape}, expected [n, {width}]")
    output_shape = outputs[OUTPUT_NAME].shape
    columns = output_shape[1] if len(output_shape) == 2 else None
    # A symbolic (str) column count is allowed here; the warm-up checks the real one.
    if len(output_shape) != 2 or (isinstance(columns, int) and columns != _output_columns(manifest)):
        raise ModelLoadError(
            f"output {OUTPUT_NAME!r} has shape {output_shape}, expected [n, {_output_columns(manifest)}] "
            f"for a {manifest.output.kind} model"
        )


def _output_columns(manifest: ModelManifest) -> int:
    return 2 if manifest.output.kind == "ensemble" else 1


def _warm_up(model: LoadedModel, rows: int) -> float:
    """One maximum-size batch and one single row, so the first requests don't pay for allocation."""
    started = time.perf_counter()
    for n in (max(1, rows), 1):
        features = np.zeros((n, model.featurizer.width), dtype=np.float32)
        (y,) = model.session.run([OUTPUT_NAME], {INPUT_NAME: features})
        if y.shape != (n, _output_columns(model.manifest)):
            raise ModelLoadError(
                f"warm-up with {n} rows returned shape {list(y.shape)}, "
                f"expected [{n}, {_output_columns(model.manifest)}] for a {model.manifest.output.kind} model"
            )
    return time.perf_counter() - started
