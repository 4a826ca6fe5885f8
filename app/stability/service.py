"""Wiring: the stability assessor a service (or the CLI) uses, from settings and loaded models."""

from __future__ import annotations

import logging

from app.inference.manifest import StabilityCalibration
from app.inference.registry import ModelRegistry
from app.settings import Settings
from app.stability.assess import SOURCE_PROPERTY, StabilityAssessor
from app.stability.hull import HullCache
from app.stability.reference import load_reference

logger = logging.getLogger(__name__)


def load_stability(settings: Settings, registry: ModelRegistry) -> StabilityAssessor | None:
    """The assessor, or None when no formation_energy_mp model is served (nothing to compare).

    A bad reference file raises HullReferenceError: the service refuses to start rather than
    answer every stability question from a half-read hull.
    """
    if SOURCE_PROPERTY not in registry.by_property:
        if settings.hull_reference is not None:
            logger.warning(
                "IBRNET_HULL_REFERENCE is set but no %s model is served: e_above_hull is off", SOURCE_PROPERTY
            )
        return None
    reference = load_reference(settings.hull_reference)
    logger.info(
        "hull reference %s (%d compounds, sha256 %s)",
        reference.name,
        len(reference.keys),
        reference.sha256[:12],
    )
    hulls = HullCache(reference, settings.hull_cache_systems)
    return StabilityAssessor(reference, hulls, source_calibration(registry))


def source_calibration(registry: ModelRegistry) -> StabilityCalibration | None:
    """The p_stable calibration of the served formation_energy_mp model (None: Gaussian)."""
    source = registry.by_property.get(SOURCE_PROPERTY)
    return source.manifest.stability if source is not None else None
