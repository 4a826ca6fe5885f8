"""What a prediction is, as every caller (HTTP, CLI, screening) receives it.

Plain slotted dataclasses: orjson serialises them directly, in field order, which is the
response shape of design.md (``{"formula", "composition", "predictions": {...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import DomainError


@dataclass(frozen=True, slots=True)
class Interval:
    """A prediction interval: the true value lies in [low, high] for ``level`` of compositions like
    the validation split's (split-conformal; the model's model.json says how it was fitted)."""

    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "level": self.level}

    def shifted(self, by: float) -> Interval:
        return Interval(self.low + by, self.high + by, self.level)


@dataclass(frozen=True, slots=True)
class PropertyPrediction:
    value: float | None  # None only when a model produced a non-finite number (JSON has no NaN)
    unit: str
    model: str
    version: str
    uncertainty: float | None  # ensemble (or distilled heads') standard deviation; None for a point model
    interval: Interval | None  # where the model has an uncertainty and a calibrated interval, in its domain
    cached: bool
    # Whether the composition is like the model's training compounds (its manifest's domain; None:
    # not recorded); outside, why ({"code", "message"}), and the answer has no interval.
    in_domain: bool | None = None
    domain_warning: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "model": self.model,
            "version": self.version,
            "uncertainty": self.uncertainty,
            "interval": None if self.interval is None else self.interval.to_dict(),
            "cached": self.cached,
            "in_domain": self.in_domain,
            "domain_warning": self.domain_warning,
        }


@dataclass(frozen=True, slots=True)
class PredictionResult:
    formula: str  # as sent
    composition: str  # the canonical key: shared by every formula with the same fractional composition
    predictions: dict[str, PropertyPrediction]

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": self.formula,
            "composition": self.composition,
            "predictions": {name: p.to_dict() for name, p in self.predictions.items()},
        }


@dataclass(frozen=True, slots=True)
class ItemError:
    formula: str
    error: DomainError

    def to_dict(self) -> dict[str, Any]:
        return {"formula": self.formula, "error": self.error.to_dict()}


Result = PredictionResult | ItemError
