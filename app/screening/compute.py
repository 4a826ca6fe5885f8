"""One chunk of a screen: featurize once per feature set, run every requested model, filter.

Shared by the in-service runner, the local CLI and the Dask workers, so the three give the same
numbers for the same input. Results are columnar (numpy arrays per property) until the edge that
needs rows (the job store) or a table (CSV/Parquet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.chemistry.formula import MAX_FORMULA_LENGTH, ParsedFormula, parse_formula
from app.chemistry.ragged import RaggedBatch
from app.errors import DomainError
from app.inference.registry import LoadedModel, ModelRegistry
from app.screening.spec import PropertyFilter, ScreenRequest
from app.screening.stoichiometry import StoichiometryEncoder
from app.stability.assess import (
    DERIVED_COLUMNS,
    E_ABOVE_HULL,
    SCREEN_NAMES,
    SOURCE_PROPERTY,
    UNIT,
    StabilityAssessor,
    models_to_run,
)

IN_DOMAIN = "in_domain"  # a screen row's flag: inside every screened model's training domain
OUTSIDE = "outside"  # a stored row's properties whose models' domains it is outside of
HULL_ERROR = "hull_error"  # a stored row's reason for having no e_above_hull (as /predict's error)


@dataclass
class ChunkResult:
    """Rows of one chunk. Refused formulas have an error and NaN predictions."""

    row_index: np.ndarray  # int64: position of each row in the screen's input
    formulas: list[str]
    compositions: list[str | None]
    values: dict[str, np.ndarray]  # property -> float64
    uncertainties: dict[str, np.ndarray]  # property -> float64, NaN for point models
    errors: list[dict[str, Any] | None]
    # per property whose model records a training domain (e_above_hull: its source model's): 1.0
    # where the row lies inside it, 0.0 where outside, NaN on a refused row
    domains: dict[str, np.ndarray] = field(default_factory=dict)
    # why a row has no e_above_hull (StabilityAssessor.why_not's error body), None where it has one
    # or the screen asks for no stability; empty when it asks for none
    hull_errors: list[dict[str, Any] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.formulas)

    @property
    def in_domain(self) -> np.ndarray:
        """1.0 where a row is inside every recorded domain, 0.0 outside one, NaN where none is
        recorded (or the row was refused)."""
        if not self.domains:
            return np.full(len(self), np.nan)
        return np.minimum.reduce(list(self.domains.values()))

    def take(self, index: np.ndarray) -> ChunkResult:
        """The rows at ``index`` (a boolean mask or positions), in that order."""
        positions = np.flatnonzero(index) if index.dtype == bool else index
        picked = positions.tolist()
        return ChunkResult(
            row_index=self.row_index[positions],
            formulas=[self.formulas[i] for i in picked],
            compositions=[self.compositions[i] for i in picked],
            values={name: column[positions] for name, column in self.values.items()},
            uncertainties={name: column[positions] for name, column in self.uncertainties.items()},
            errors=[self.errors[i] for i in picked],
            domains={name: flags[positions] for name, flags in self.domains.items()},
            hull_errors=[self.hull_errors[i] for i in picked] if self.hull_errors else [],
        )


class ScreenModels:
    """The models a screen asks for, and how to run them on a chunk.

    With a stability assessor, ``e_above_hull`` and its companion columns ``p_stable`` and
    ``known`` are computed from the formation_energy_mp model, which then runs too.
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        max_formula_length: int = MAX_FORMULA_LENGTH,
        stability: StabilityAssessor | None = None,
    ) -> None:
        if not models:
            raise DomainError("no_models", "no model is loaded, so there is nothing to screen with")
        self.models = list(models)
        self.stability = stability
        self.source = next((m for m in self.models if m.property == SOURCE_PROPERTY), None)
        if stability is not None and self.source is None:
            raise ValueError(f"stability needs the {SOURCE_PROPERTY} model among the models")
        self.properties = [model.property for model in self.models]
        if stability is not None:
            self.properties += [E_ABOVE_HULL, *DERIVED_COLUMNS]
        self.max_formula_length = max_formula_length
        # A row must be featurizable by every requested model.
        self.elements: frozenset[str] = frozenset.intersection(*(model.elements for model in self.models))

    @classmethod
    def from_registry(
        cls,
        registry: ModelRegistry,
        properties: Sequence[str] | None,
        max_formula_length: int = MAX_FORMULA_LENGTH,
        stability: StabilityAssessor | None = None,
    ) -> ScreenModels:
        to_run, wanted = models_to_run(properties, registry.by_property, stability is not None, SCREEN_NAMES)
        return cls(registry.resolve(to_run), max_formula_length, stability if wanted else None)

    def describe(self) -> dict[str, dict[str, Any]]:
        """What a job records about each model, so its results name the model that made them."""
        described = {
            model.property: {
                "model": model.name,
                "version": model.version,
                # what its answers depend on besides the file (the chemistry, output rules such as
                # elements_are_zero): a change mid-job is a model change too
                "cache_version": model.cache_version,
                "unit": model.unit,
                "uncertainty": model.manifest.output.kind == "ensemble",
                # its training domain (None: not recorded): rows say in_domain for it then
                "training_domain": None if model.manifest.domain is None else model.manifest.domain.digest,
            }
            for model in self.models
        }
        if self.stability is not None and self.source is not None:
            source = described[self.source.property]
            reference = self.stability.reference.describe()
            described[E_ABOVE_HULL] = {
                **source,
                "unit": UNIT,
                "reference": reference,
                "p_stable": self.stability.describe_p_stable(),
            }
            for column in DERIVED_COLUMNS:
                described[column] = {**source, "unit": "", "uncertainty": False, "derived_from": E_ABOVE_HULL}
        return described

    def domains(self, batch: RaggedBatch) -> dict[str, np.ndarray]:
        """Per property whose model records a training domain: 1.0 where a formula of ``batch`` is
        inside it, else 0.0 (e_above_hull has its source model's)."""
        flags: dict[str, np.ndarray] = {}
        for model in self.models:
            inside = model.in_domain(batch)
            if inside is not None:
                flags[model.property] = inside.astype(np.float64)
        if self.stability is not None and SOURCE_PROPERTY in flags:
            flags[E_ABOVE_HULL] = flags[SOURCE_PROPERTY]
        return flags

    def predict_batch(self, batch: RaggedBatch) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(values, uncertainties) per model property; each feature set is computed once for all models."""
        features: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        uncertainties: dict[str, np.ndarray] = {}
        for model in self.models:
            spec = model.manifest.features.spec
            if spec not in features:
                features[spec] = np.asarray(model.featurizer.transform_batch(batch), dtype=np.float32)
            output = model.predict(features[spec], batch.counts).astype(np.float64)
            values[model.property] = output[:, 0]
            uncertainties[model.property] = output[:, 1]
        return values, uncertainties

    def add_stability(
        self,
        values: dict[str, np.ndarray],
        uncertainties: dict[str, np.ndarray],
        keys: Sequence[str | None],
        hull_energy: np.ndarray,
        element_counts: np.ndarray,
        domains: Mapping[str, np.ndarray],
    ) -> None:
        """e_above_hull, p_stable and known from the source model's columns and the hull energies
        (p_stable is NaN outside the source model's training domain, see ``above_hull``)."""
        assert self.stability is not None and self.source is not None
        predicted = values[self.source.property]
        sigma = uncertainties[self.source.property]
        inside = domains.get(self.source.property)
        above, probability = self.stability.above_hull(predicted, sigma, hull_energy, element_counts, inside)
        values[E_ABOVE_HULL] = above
        uncertainties[E_ABOVE_HULL] = np.where(
            element_counts == 1, 0.0, np.where(np.isfinite(above), sigma, np.nan)
        )
        values["p_stable"], uncertainties["p_stable"] = probability, np.full(len(above), np.nan)
        values["known"], uncertainties["known"] = self.stability.known(keys), np.full(len(above), np.nan)

    def hull_errors(self, systems: Sequence[frozenset[str] | None]) -> list[dict[str, Any] | None]:
        """Why each row gets no e_above_hull (None: it gets one, or is refused), as /predict says it."""
        assert self.stability is not None
        reasons: dict[frozenset[str], dict[str, Any] | None] = {}
        for system in systems:
            if system is not None and system not in reasons:
                reasons[system] = self.stability.why_not(system)
        return [None if system is None else reasons[system] for system in systems]

    def predict_amounts(
        self, encoder: StoichiometryEncoder, amounts: np.ndarray, first_row: int
    ) -> ChunkResult:
        """An enumeration chunk: every row is valid by construction (elements checked up front)."""
        keys = encoder.keys(amounts)
        batch = encoder.batch(amounts)
        values, uncertainties = self.predict_batch(batch)
        domains = self.domains(batch)
        hull_errors: list[dict[str, Any] | None] = []
        if self.stability is not None:
            hull_energy = self.stability.hull_energy_matrix(encoder.elements, amounts)
            self.add_stability(values, uncertainties, keys, hull_energy, (amounts > 0).sum(axis=1), domains)
            # rows of one sub-system share a reason: look each sub-system up once
            present = amounts > 0
            systems, row_system = np.unique(present, axis=0, return_inverse=True)
            elements = np.array(encoder.elements)
            reasons = self.hull_errors([frozenset(elements[system]) for system in systems])
            hull_errors = [reasons[i] for i in row_system.ravel().tolist()]
        return ChunkResult(
            row_index=np.arange(first_row, first_row + len(amounts), dtype=np.int64),
            formulas=keys,
            compositions=list(keys),
            values=values,
            uncertainties=uncertainties,
            errors=[None] * len(amounts),
            domains=domains,
            hull_errors=hull_errors,
        )

    def predict_formulas(self, formulas: Sequence[str], first_row: int) -> ChunkResult:
        """Formulas as given: each is parsed once; a refused one becomes a row with its error."""
        parsed: list[ParsedFormula] = []
        valid: list[int] = []
        errors: list[dict[str, Any] | None] = [None] * len(formulas)
        compositions: list[str | None] = [None] * len(formulas)
        for position, text in enumerate(formulas):
            try:
                formula = parse_formula(text, self.elements, self.max_formula_length)
            except DomainError as error:
                errors[position] = error.to_dict()
                continue
            except Exception:  # a parser bug costs one row, never the job (as in /predict/batch)
                errors[position] = {
                    "code": "invalid_formula",
                    "message": f"cannot parse formula {text[:80]!r}",
                }
                continue
            parsed.append(formula)
            valid.append(position)
            compositions[position] = formula.canonical_key
        values = {name: np.full(len(formulas), np.nan) for name in self.properties}
        uncertainties = {name: np.full(len(formulas), np.nan) for name in self.properties}
        domains: dict[str, np.ndarray] = {}
        hull_errors: list[dict[str, Any] | None] = []
        if parsed:
            batch = RaggedBatch.from_formulas(parsed)
            batch_domains = self.domains(batch)
            for name, flags in batch_domains.items():
                domains[name] = np.full(len(formulas), np.nan)
                domains[name][valid] = flags
            got_values, got_uncertainties = self.predict_batch(batch)
            if self.stability is not None:
                systems: list[frozenset[str] | None] = [None] * len(formulas)
                for position, formula in zip(valid, parsed, strict=True):
                    systems[position] = frozenset(formula.elements)
                hull_errors = self.hull_errors(systems)
                hull_energy = self.stability.hull_energies([formula.amount_dict for formula in parsed])
                keys = [formula.canonical_key for formula in parsed]
                counts = np.array([len(formula.elements) for formula in parsed])
                self.add_stability(got_values, got_uncertainties, keys, hull_energy, counts, batch_domains)
            for name in self.properties:
                values[name][valid] = got_values[name]
                uncertainties[name][valid] = got_uncertainties[name]
        return ChunkResult(
            row_index=np.arange(first_row, first_row + len(formulas), dtype=np.int64),
            formulas=[str(text) for text in formulas],
            compositions=compositions,
            values=values,
            uncertainties=uncertainties,
            errors=errors,
            domains=domains,
            hull_errors=hull_errors,
        )


def passes_filters(result: ChunkResult, request: ScreenRequest) -> np.ndarray:
    """Boolean mask of the rows that satisfy every filter (refused rows never do, if any filter is set)."""
    keep = np.ones(len(result), dtype=bool)
    filtering = bool(request.filters) or request.max_uncertainty is not None or request.in_domain_only
    if not filtering:
        return keep
    keep &= np.array([error is None for error in result.errors], dtype=bool)
    if request.in_domain_only:
        keep &= result.in_domain != 0.0  # NaN (no model records a domain) is not evidence of outside
    for name, bounds in request.filters.items():
        keep &= _within(result.values[name], result.uncertainties[name], bounds, result.domains.get(name))
    if request.max_uncertainty is not None:
        for name, uncertainty in result.uncertainties.items():
            # A value without an uncertainty is a point model's: max_uncertainty does not apply to
            # it. No value at all (e_above_hull past the hull's elements) is not certain enough, as
            # with the property's own bound (_within).
            certain = (uncertainty <= request.max_uncertainty) & _not_outside(result.domains.get(name))
            keep &= (np.isnan(uncertainty) & np.isfinite(result.values[name])) | certain
    return keep


def _within(
    values: np.ndarray, uncertainty: np.ndarray, bounds: PropertyFilter, domain: np.ndarray | None
) -> np.ndarray:
    keep = np.isfinite(values)
    if bounds.min is not None:
        keep &= values >= bounds.min
    if bounds.max is not None:
        keep &= values <= bounds.max
    if bounds.max_uncertainty is not None:
        keep &= uncertainty <= bounds.max_uncertainty  # False for NaN: unknown is not "certain enough"
        keep &= _not_outside(domain)
    return keep


def _not_outside(domain: np.ndarray | None) -> np.ndarray | bool:
    """An uncertainty outside the model's training domain says nothing (Si's band gap: 0 +- 0),
    so it never passes an uncertainty bound; NaN (not recorded, or a refused row) is not outside."""
    return True if domain is None else domain != 0.0


def rank_within(result: ChunkResult, request: ScreenRequest) -> ChunkResult:
    """Sorted by ``sort_by`` (ties in input order) and cut to ``top_k``; rows without a value last/out.

    The global top_k of a screen is within the union of its chunks' top_k, so workers cut
    their partitions before sending them.
    """
    if request.sort_by is None:
        return result
    values = result.values[request.sort_by]
    finite = np.isfinite(values)
    order_key = np.where(finite, values if request.ascending else -values, np.inf)
    order = np.lexsort((result.row_index, order_key))  # last key is primary
    if request.top_k is not None:
        order = order[finite[order]][: request.top_k]
    return result.take(order)
