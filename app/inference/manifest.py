"""``models/<name>/model.json``: what a shipped model is, how it was made, how good it is.

Written by training/export.py, read by the registry. The model version is derived from the
ONNX file's hash, so a response always says exactly which file answered.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from app.chemistry.formula import ATOMIC_NUMBER, ParsedFormula
from app.chemistry.ragged import RaggedBatch

MANIFEST_FILE = "model.json"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"


class FeatureSpec(BaseModel):
    spec: Literal["ef", "pa", "ef+pa"]
    version: str
    width: int
    elements: list[str]  # the element set (for ef: the column order) a formula must stay inside


class Architecture(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str  # ibrnet | brnet | irnet | elemnet | attention, or "ibrnet+attention" for a mixed ensemble
    parameters: int
    config: dict[str, Any] = Field(default_factory=dict)  # the (first) member's network
    members: list[dict[str, Any]] | None = None  # each member's network, where they differ

    def member_config(self, member: int) -> dict[str, Any]:
        """Member ``member``'s network configuration (every member's is ``config`` unless mixed)."""
        return self.members[member] if self.members else self.config


class IntervalCalibration(BaseModel):
    """A ``level`` prediction interval, value +- scale * uncertainty (training/intervals.py)."""

    level: float = 0.9
    scale: float  # in units of the served uncertainty, fitted on validation (split-conformal)
    method: str = "split-conformal on the validation split, scores |y - mean| / sigma"
    calibration_rows: int | None = None

    def bounds(self, value: float, uncertainty: float, floor: float | None) -> tuple[float, float]:
        """The interval around ``value``; its low end never below the property's floor (band gaps >= 0)."""
        low, high = value - self.scale * uncertainty, value + self.scale * uncertainty
        return (low if floor is None else max(low, floor)), high


class StabilityCalibration(BaseModel):
    """How ``p_stable`` is read off a model behind ``e_above_hull`` (app/stability/assess.py).

    Composition-only errors are heavy-tailed and shrink extreme energies towards the middle, so
    the Gaussian probability Phi(-e_above_hull / sigma) is overconfident at both ends and too low
    just below 0.5-0.7 (observed on validation). The served probability is that Gaussian one
    mapped through this monotone curve: isotonic regression of "stable in DFT" on the Gaussian
    probability over the validation compounds, each against the hull of the train compounds (the
    service's protocol, with no test compound anywhere). Linear between knots, flat beyond them.
    """

    gaussian: list[float]  # knots: Gaussian probabilities, increasing
    observed: list[float]  # the served probability at each knot, non-decreasing
    method: str = (
        "isotonic regression on the validation split: each validation compound's Gaussian p_stable "
        "against the hull of the train compounds' DFT energies, target: stable in DFT"
    )
    calibration_rows: int | None = None

    @model_validator(mode="after")
    def _a_monotone_curve(self) -> StabilityCalibration:
        # Refused when the manifest is read: a bad curve would fail or mislead every answer.
        knots, values = np.asarray(self.gaussian), np.asarray(self.observed)
        if len(knots) == 0 or len(knots) != len(values):
            raise ValueError("stability: gaussian and observed need the same number of knots, at least one")
        if np.any(np.diff(knots) <= 0) or np.any(np.diff(values) < 0):
            raise ValueError("stability: gaussian must increase and observed must not decrease")
        if not (np.all((knots >= 0) & (knots <= 1)) and np.all((values >= 0) & (values <= 1))):
            raise ValueError("stability: knots and values are probabilities, in [0, 1]")
        return self

    def apply(self, gaussian: np.ndarray) -> np.ndarray:
        return np.interp(gaussian, self.gaussian, self.observed)

    @property
    def digest(self) -> str:
        """Names this curve in a screen's record: a resumed screen must read p_stable the same way."""
        knots = json.dumps([self.gaussian, self.observed]).encode()
        return hashlib.sha256(knots).hexdigest()[:12]


class Output(BaseModel):
    # point: y is [n, 1]; ensemble: y is [n, 2] = mean and standard deviation over members (or over a
    # distilled student's heads: architecture.config.heads > 1)
    kind: Literal["point", "ensemble"] = "point"
    members: int = 1
    # ensembles: the members' standard deviation is multiplied by this before it is served, fitted so
    # that 68.3% of validation rows fall within one sigma (training/calibration.py); None: not scaled
    sigma_scale: float | None = None
    # ensembles: each member's weight in the served mean, in run-directory order (sigma always uses
    # every member); "equal", or "fitted" to the lowest validation MAE (training/member_weights.py)
    member_weights: list[float] | None = None
    member_weights_fit: Literal["equal", "fitted", "teacher"] | None = None  # teacher: a student's
    # models with an uncertainty: the prediction interval served beside it (None: no interval)
    interval: IntervalCalibration | None = None
    # The target is measured from the elements' reference states (a formation energy), so a single
    # element's value is 0 by definition: served as 0 with uncertainty 0, not as the network's guess
    # (the training splits hold no single element; Si came out at +0.46 eV/atom).
    elements_are_zero: bool = False


# An element the network met in fewer labelled training compounds than this has too few examples
# to have been learned, and no validation split holds enough of its compounds to say how well
# (OQMD band gap: Kr is in 1 training compound, Xe in 28; 1 validation row has an element below 10).
MIN_ELEMENT_COMPOUNDS = 10


class TrainingDomain(BaseModel):
    """The compositions a model's answers were measured on: those like its labelled training
    compounds (a distilled student's teacher-labelled transfer compositions do not count).

    Outside it an answer is an extrapolation: its uncertainty and interval were calibrated on
    compositions unlike it (a single element's band gap came out 0 +- 0, interval [0, 0]; Si's
    is about 0.6 eV). Such an answer says ``in_domain: false`` and why, and has no interval.
    """

    element_counts: tuple[int, int]  # fewest and most elements in one training compound
    elements: dict[str, int]  # element -> labelled training compounds that contain it
    min_compounds: int = MIN_ELEMENT_COMPOUNDS  # an element in fewer is outside
    # the smallest share of the atoms an element has in a training compound (OQMD 1/150): a trace
    # (Fe10000Si0.0001) is a composition no network saw, however common its elements; None: not
    # recorded (manifests written before it), no such rule
    min_fraction: float | None = None
    source: str = "the train split's labelled compounds"
    _supported: frozenset[str] = PrivateAttr(default=frozenset())

    def model_post_init(self, context: Any, /) -> None:
        self._supported = frozenset(e for e, n in self.elements.items() if n >= self.min_compounds)

    @property
    def digest(self) -> str:
        """Names this domain: Dask workers must flag answers by the same one (app/screening)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def warning(self, formula: ParsedFormula, exact_for_elements: bool = False) -> dict[str, str] | None:
        """Why ``formula`` lies outside; None: inside. ``exact_for_elements``: a single element's
        answer is fixed by definition (``elements_are_zero``), so it is inside."""
        elements, fractions = formula.elements, formula.fractions
        fewest, most = self.element_counts
        counted = fewest <= len(elements) <= most
        known = self._supported.issuperset(elements)
        smallest = min(fractions)
        whole = self.min_fraction is None or smallest >= self.min_fraction
        if (counted and known and whole) or (exact_for_elements and len(elements) == 1):
            return None
        reasons: list[tuple[str, str]] = []
        if not counted:
            count = "a single element" if len(elements) == 1 else f"{len(elements)} elements"
            reasons.append(
                ("element_count", f"{count}; the model's training compounds have {fewest} to {most}")
            )
        if not known:
            rare = [e for e in elements if e not in self._supported]
            absent = [e for e in rare if not self.elements.get(e)]
            if absent:
                reasons.append(("rare_element", f"no training compound contains {', '.join(absent)}"))
            if len(absent) < len(rare):
                seen = ", ".join(f"{e} in {self.elements[e]}" for e in rare if e not in absent)
                reasons.append(("rare_element", f"few training compounds contain {seen} "
                                                f"(fewer than {self.min_compounds})"))  # fmt: skip
        if not whole:
            trace = elements[fractions.index(smallest)]
            reasons.append(("trace_element", f"{trace} is {smallest:.3g} of the atoms; no element is under "
                                              f"{self.min_fraction:.3g} in a training compound"))  # fmt: skip
        return {
            "code": reasons[0][0],
            "message": "outside the training domain: " + "; ".join(m for _, m in reasons),
        }

    def inside(self, batch: RaggedBatch, exact_for_elements: bool = False) -> np.ndarray:
        """``warning(...) is None`` for every formula of ``batch`` at once."""
        fewest, most = self.element_counts
        inside = (batch.counts >= fewest) & (batch.counts <= most)
        outside_entry = ~_by_atomic_number(self._supported)[batch.atomic_numbers]
        if self.min_fraction is not None:
            outside_entry |= batch.fractions < self.min_fraction
        inside &= np.bincount(batch.rows[outside_entry], minlength=len(batch)) == 0
        if exact_for_elements:
            inside |= batch.counts == 1
        return inside


@lru_cache(maxsize=64)
def _by_atomic_number(elements: frozenset[str]) -> np.ndarray:
    """``elements`` as a lookup by atomic number, so a batch is checked in numpy (a screen checks
    millions of rows). Cached here, not held by the domain: pydantic compares private attributes
    with ==, which an array cannot answer."""
    lookup = np.zeros(max(ATOMIC_NUMBER.values()) + 1, dtype=bool)
    lookup[[ATOMIC_NUMBER[e] for e in elements if e in ATOMIC_NUMBER]] = True
    return lookup


class SplitMetrics(BaseModel):
    mae: float
    rmse: float
    r2: float
    n: int
    # ensembles only: share of rows with |error| <= 1 and 2 sigma, rank correlation of sigma and |error|
    within_1_sigma: float | None = None
    within_2_sigma: float | None = None
    sigma_error_spearman: float | None = None
    interval_coverage: float | None = None  # share of rows inside the served interval (output.interval)


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    source: str
    sizes: dict[str, int]  # split -> rows used
    sha256: dict[str, str]  # split -> file hash
    skipped_rows: dict[str, int] = Field(default_factory=dict)


class TrainingInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    command: str
    seed: int
    epochs: int | None = None
    best_epoch: int | None = None
    wall_time_s: float | None = None
    hardware: str | None = None


class Variant(BaseModel):
    file: str
    sha256: str
    quantization: Literal["int8"]
    metrics: dict[str, SplitMetrics] = Field(default_factory=dict)
    # which dense layers are int8: those with >= min_layer_weights weights (the rest stay float32)
    min_layer_weights: int | None = None
    quantized_layers: int | None = None
    layers: int | None = None


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    property: str  # snake_case, e.g. formation_enthalpy
    unit: str
    description: str = ""
    features: FeatureSpec
    architecture: Architecture
    output: Output = Field(default_factory=Output)
    dataset: DatasetInfo
    metrics: dict[str, SplitMetrics]  # split -> metrics; "test" is the headline
    training: TrainingInfo
    onnx_sha256: str
    variants: dict[str, Variant] = Field(default_factory=dict)  # e.g. {"int8": ...}
    created: str
    citations: list[str] = Field(default_factory=list)
    # models behind e_above_hull (formation_energy_mp): p_stable's calibration; None: Gaussian
    stability: StabilityCalibration | None = None
    # where its answers hold (None: not recorded, every answer's in_domain is null)
    domain: TrainingDomain | None = None

    @model_validator(mode="after")
    def _one_network_record_per_member(self) -> ModelManifest:
        records = self.architecture.members
        if records is not None and len(records) != self.output.members:
            raise ValueError(f"architecture.members lists {len(records)} networks; output has "
                             f"{self.output.members} members")  # fmt: skip
        return self

    @property
    def version(self) -> str:
        return version_from_sha256(self.onnx_sha256)

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        return cls.model_validate_json((model_dir / MANIFEST_FILE).read_text())

    def save(self, model_dir: Path) -> None:
        text = json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False)
        (model_dir / MANIFEST_FILE).write_text(text + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_from_sha256(sha256: str) -> str:
    return sha256[:12]
