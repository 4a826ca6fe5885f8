"""Request and response shapes of the HTTP API (design.md), with their declared limits.

Requests are validated by these models. Responses of the prediction endpoints are built as
plain dicts and serialised with orjson (a 100,000-row batch must not pay for 100,000 pydantic
objects); the response models here document them in OpenAPI and tests check the two agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema

from app.chemistry.formula import NotAString
from app.errors import PayloadTooLargeError
from app.inference.manifest import Architecture, DatasetInfo, FeatureSpec, Output, SplitMetrics, TrainingInfo

# A property name is a short identifier; a longer one is refused before it is looked up (and echoed
# back in an unknown_property message).
MAX_PROPERTY_NAME_LENGTH = 64
PropertyName = Annotated[str, Field(min_length=1, max_length=MAX_PROPERTY_NAME_LENGTH)]


# The validation context key that bounds a formula list's length (IBRNET_MAX_BATCH_ITEMS).
MAX_ITEMS = "max_items"


def _formula_items(items: list[Any], info: ValidationInfo) -> list[str]:
    # The whole list in one pass, after pydantic-core has read it: a validator per item cost ~5 µs
    # each with the event loop held (a million `1`s, 3 MiB, held it for 5 s), and the length is
    # checked before that pass, not after 5,000,000 items were converted.
    limit = info.context.get(MAX_ITEMS) if info.context else None
    if limit is not None and len(items) > limit:
        raise PayloadTooLargeError(
            "too_many_items",
            f"{len(items)} formulas in one batch; the limit is {limit}",
            limit=limit,
            count=len(items),
        )
    # Any other item is refused alone by the parser (invalid_formula, naming its JSON kind), so one
    # wrong-typed item never fails the batch.
    return [item if isinstance(item, str) else NotAString.of(item) for item in items]


# A list of formulas: strings, and anything else carried to be refused alone (see above).
FormulaList = Annotated[
    list[Any],
    AfterValidator(_formula_items),
    WithJsonSchema({"type": "array", "items": {"type": "string"}}),
]

PROPERTIES_DESCRIPTION = (
    "Properties to predict (e.g. formation_enthalpy, band_gap); all served properties when omitted. "
    "An unknown property is refused with 422 unknown_property."
)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"formula": "Fe2O3"}]})

    # The length limit (IBRNET_MAX_FORMULA_LENGTH) is enforced by the parser, which answers
    # 422 formula_too_long naming the limit, the same way for /predict and each batch item.
    formula: str = Field(description="A chemical formula, e.g. Fe2O3, (NH4)2SO4, CuSO4·5H2O, Fe0.4O0.6")
    properties: list[PropertyName] | None = Field(
        None, min_length=1, max_length=64, description=PROPERTIES_DESCRIPTION
    )


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"formulas": ["Fe2O3", "NaCl", "GaAs"]}]}
    )

    formulas: FormulaList = Field(
        description="Formulas, answered in this order. At most IBRNET_MAX_BATCH_ITEMS (default 100,000); "
        "more is refused with 413 too_many_items."
    )
    properties: list[PropertyName] | None = Field(
        None, min_length=1, max_length=64, description=PROPERTIES_DESCRIPTION
    )


class IntervalPublic(BaseModel):
    low: float
    high: float
    level: float = Field(description="Share of true values the interval holds, e.g. 0.9")


class DomainWarningPublic(BaseModel):
    code: Literal["element_count", "rare_element", "trace_element"] = Field(
        description="element_count: fewer or more elements than any training compound; rare_element: "
        "an element few training compounds contain; trace_element: an element with a smaller share "
        "of the atoms than any has in a training compound (the first that applies; the message names all)"
    )
    message: str = Field(
        description="Human-readable: the composition's count or elements against the training data's"
    )


class PropertyPredictionPublic(BaseModel):
    value: float | None = Field(
        description="The prediction (null only if the model produced a non-finite number)"
    )
    unit: str
    model: str = Field(description="Name of the model that answered")
    version: str = Field(description="The model version: derived from the ONNX file's sha256")
    uncertainty: float | None = Field(
        description="One standard deviation (an ensemble's or a distilled network's heads', calibrated on "
        "validation); null for a model without one"
    )
    interval: IntervalPublic | None = Field(
        None,
        description="Where the model has an uncertainty: the true value lies in [low, high] for `level` "
        "(0.9) of compositions like the validation split's (split-conformal calibration); null "
        "outside the model's training domain",
    )
    cached: bool = Field(description="True when the value came from the prediction cache")
    in_domain: bool | None = Field(
        None,
        description="Whether the composition is like the model's training compounds (element count "
        "within theirs, each element in at least the manifest's domain.min_compounds of them: 10 for "
        "the shipped models); false: an extrapolation, without an interval; null: the model records "
        "no training domain",
    )
    domain_warning: DomainWarningPublic | None = Field(
        None, description="Why it is outside (in_domain false)"
    )


class PredictionPublic(BaseModel):
    formula: str = Field(description="The formula as sent")
    composition: str = Field(
        description="Canonical key: formulas with the same fractional composition share it"
    )
    predictions: dict[str, PropertyPredictionPublic]


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="snake_case, stable: e.g. unknown_element, formula_too_long")
    message: str = Field(description="Human-readable; names the offending input")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ItemErrorPublic(BaseModel):
    formula: str
    error: ErrorBody


class BatchPredictionPublic(BaseModel):
    results: list[PredictionPublic | ItemErrorPublic] = Field(
        description="One per input formula, in input order"
    )


class ModelPublic(BaseModel):
    """The whole manifest (model.json) plus what the running service adds to it."""

    model_config = ConfigDict(extra="allow")
    name: str
    property: str
    unit: str
    version: str = Field(description="Derived from the sha256 of the ONNX file in use")
    provider: str = Field(description="ONNX Runtime execution provider in use")
    variant: Literal["fp32", "int8"] = "fp32"
    features: FeatureSpec
    architecture: Architecture
    output: Output
    metrics: dict[str, SplitMetrics]
    dataset: DatasetInfo
    training: TrainingInfo
    onnx_sha256: str
    created: str


class ModelsPublic(BaseModel):
    models: list[ModelPublic]
    derived: list[dict[str, Any]] = Field(
        default_factory=list, description="Properties computed from models (e_above_hull and its reference)"
    )
    skipped: dict[str, str] = Field(default_factory=dict, description="Model folders not served, and why")


class HealthPublic(BaseModel):
    status: Literal["ok"]


class LimitsPublic(BaseModel):
    max_batch_items: int = Field(description="Formulas per /predict/batch request (IBRNET_MAX_BATCH_ITEMS)")
    max_formula_length: int = Field(description="Characters per formula (IBRNET_MAX_FORMULA_LENGTH)")
    max_body_bytes: int = Field(description="Bytes per request body (IBRNET_MAX_BODY_BYTES)")
    screen_max_compositions: int = Field(description="Rows per screening job (SCREEN_MAX_COMPOSITIONS)")
    screen_max_atoms: int = Field(description="Largest max_atoms of an enumeration")


class ReadyPublic(BaseModel):
    status: Literal["ready", "degraded", "unavailable"]
    reasons: list[str]
    models: list[str] = Field(description="Properties being served")
    database: Literal["ok", "unavailable"]
    pending_cache_writes: int


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place: no ``$defs``.

    A request body schema placed in OpenAPI by hand (``openapi_extra``) is not collected into
    ``components``, and its ``#/$defs/...`` refs would resolve against the OpenAPI document's
    root, where nothing is: clients and schema-driven tools could not read it.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            return resolve({**definitions[ref.removeprefix("#/$defs/")], **siblings})
        return {key: resolve(value) for key, value in node.items()}

    return resolve(schema)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON (invalid_json)"},
    413: {"model": ErrorResponse, "description": "Body too large (payload_too_large) or too many items"},
    422: {
        "model": ErrorResponse,
        "description": "Invalid request, formula or property, or a JSON key named twice (duplicate_key)",
    },
}
