"""Results as pandas DataFrames: the one shaper for HTTP answers, screening pages and in-process runs.

A result is a dict shaped like a /predict answer, ``{"formula", "composition", "predictions":
{PROPERTY: {"value", "uncertainty", ...}}}``, or a refused formula, ``{"formula", "error":
{"code", "message", ...}}`` (screening rows add ``index``). Both paths of the client pass their
results through ``results_frame``, so a DataFrame does not depend on where it was computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# Fields of a property's answer that have their own columns or live in ``frame.attrs``; any other
# field a newer service adds becomes a ``<property>_<field>`` column, so nothing is dropped.
_SHAPED_FIELDS = frozenset(
    {"value", "uncertainty", "interval", "unit", "model", "version", "cached", "in_domain", "domain_warning"}
)
# Fields only the stability answer (e_above_hull) carries: their columns are named as the service
# names them everywhere else (its CSV columns, a screen's sort_by and filters), so a notebook's
# frame["p_stable"] matches sort_by="p_stable". Any other extra field is ``<property>_<field>``.
SERVICE_COLUMNS = frozenset({"p_stable", "decomposition", "known", "reference_value", "reference"})


def results_frame(
    results: Sequence[Mapping[str, Any]], properties: Sequence[str] | None = None, *, index: bool = False
) -> pd.DataFrame:
    """One row per result, in order.

    Columns: ``index`` (with ``index=True``: a screening row's input position), ``formula``,
    ``composition``, then for each property ``<property>`` and ``<property>_uncertainty`` (NaN for a
    model without one), ``<property>_low`` / ``<property>_high`` when the service sends intervals,
    ``<property>_in_domain``, ``<property>_domain_code`` and ``<property>_domain_warning`` (why not:
    its code and its message) for a model that records
    its training domain, any other field of its answers as ``<property>_<field>`` (e_above_hull's
    ``p_stable``, ``known``, ``decomposition``, ``reference_value`` and ``reference`` under those
    names), ``in_domain`` for screening rows (inside every screened model's
    training domain, where one records it), then ``error_code`` and ``error_message``
    (None on predicted rows; the values are NaN on refused rows). ``properties`` fixes which
    property columns exist and their order (None: those found in the results).
    ``frame.attrs["models"]`` maps each property to its model, version, unit (and interval level)
    as the first row that has it reports them.
    """
    names = list(dict.fromkeys([*(properties or []), *_properties_in(results)]))
    n = len(results)
    formula: list[Any] = [None] * n
    composition: list[Any] = [None] * n
    error_code: list[Any] = [None] * n
    error_message: list[Any] = [None] * n
    values = {name: np.full(n, np.nan) for name in names}
    uncertainties = {name: np.full(n, np.nan) for name in names}
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    in_domain: dict[str, list[Any]] = {}  # property -> flag per row, for a model that records a domain
    warning_codes: dict[str, list[Any]] = {}
    warnings: dict[str, list[Any]] = {}
    extras: dict[str, dict[str, list[Any]]] = {}  # property -> field -> column
    models: dict[str, dict[str, Any]] = {}
    for row, result in enumerate(results):
        formula[row] = result.get("formula")
        error = result.get("error")
        if error is not None:
            error_code[row] = error.get("code")
            error_message[row] = error.get("message")
            continue
        composition[row] = result.get("composition")
        for name, answer in (result.get("predictions") or {}).items():
            values[name][row] = _number(answer.get("value"))
            uncertainties[name][row] = _number(answer.get("uncertainty"))
            if name not in models:
                models[name] = {key: answer[key] for key in ("model", "version", "unit") if key in answer}
            interval = answer.get("interval")
            if isinstance(interval, Mapping):
                lows.setdefault(name, np.full(n, np.nan))[row] = _number(interval.get("low"))
                highs.setdefault(name, np.full(n, np.nan))[row] = _number(interval.get("high"))
                if "level" in interval:
                    models[name].setdefault("interval_level", interval["level"])
            if answer.get("in_domain") is not None:
                in_domain.setdefault(name, [None] * n)[row] = answer["in_domain"]
                warning = answer.get("domain_warning")
                warning = warning if isinstance(warning, Mapping) else {}
                warning_codes.setdefault(name, [None] * n)[row] = warning.get("code")
                warnings.setdefault(name, [None] * n)[row] = warning.get("message")
            for field, value in answer.items():
                if field not in _SHAPED_FIELDS:
                    extras.setdefault(name, {}).setdefault(field, [None] * n)[row] = value

    columns: dict[str, Any] = {}
    if index:
        columns["index"] = pd.array([result.get("index") for result in results], dtype="Int64")
    columns["formula"] = formula
    columns["composition"] = composition
    for name in names:
        columns[name] = values[name]
        columns[f"{name}_uncertainty"] = uncertainties[name]
        if name in lows:
            columns[f"{name}_low"] = lows[name]
            columns[f"{name}_high"] = highs[name]
        if name in in_domain:
            columns[f"{name}_in_domain"] = pd.array(in_domain[name], dtype="boolean")
            columns[f"{name}_domain_code"] = pd.Series(warning_codes[name], dtype=object)
            columns[f"{name}_domain_warning"] = pd.Series(warnings[name], dtype=object)
        for field, column in sorted(extras.get(name, {}).items()):
            columns.setdefault(field if field in SERVICE_COLUMNS else f"{name}_{field}", column)
    if any(result.get("in_domain") is not None for result in results):  # a screen row's, every model's
        columns["in_domain"] = pd.array([result.get("in_domain") for result in results], dtype="boolean")
    columns["error_code"] = error_code
    columns["error_message"] = error_message
    frame = pd.DataFrame(columns)
    # Object columns with None (not NaN) for "nothing there": `frame.error_code.isna()` works and
    # a CSV export writes an empty cell.
    for column in ("formula", "composition", "error_code", "error_message"):
        frame[column] = frame[column].astype(object)
    frame.attrs["models"] = {name: models[name] for name in names if name in models}
    return frame


def models_frame(models: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per served model (GET /models): what it predicts, which file answers, how good it is.

    Columns: property, name, version, unit, variant, provider, architecture, parameters, features,
    output (point or ensemble), members, sigma_scale, then the test split's figures ``test_mae``,
    ``test_rmse``, ``test_r2``, ``test_n`` and, for calibrated ensembles, ``test_within_1_sigma``,
    ``test_within_2_sigma``, ``test_sigma_error_spearman`` (any other test figure a newer manifest
    carries is added the same way), then dataset, created.
    """
    rows = []
    for model in models:
        architecture = model.get("architecture") or {}
        output = model.get("output") or {}
        features = model.get("features") or {}
        dataset = model.get("dataset") or {}
        row: dict[str, Any] = {
            "property": model.get("property"),
            "name": model.get("name"),
            "version": model.get("version"),
            "unit": model.get("unit"),
            "variant": model.get("variant"),
            "provider": model.get("provider"),
            "architecture": architecture.get("name"),
            "parameters": architecture.get("parameters"),
            "features": features.get("spec"),
            "output": output.get("kind", "point"),
            "members": output.get("members", 1),
            "sigma_scale": output.get("sigma_scale"),
        }
        for key, value in ((model.get("metrics") or {}).get("test") or {}).items():
            if _scalar(value):
                row[f"test_{key}"] = value
        row["dataset"] = dataset.get("name")
        row["created"] = model.get("created")
        rows.append(row)
    head = ["property", "name", "version", "unit", "variant", "provider", "architecture", "parameters"]
    head += ["features", "output", "members", "sigma_scale", "test_mae", "test_rmse", "test_r2", "test_n"]
    tail = ["dataset", "created"]
    found = list(dict.fromkeys(key for row in rows for key in row))
    middle = [key for key in found if key not in head and key not in tail]
    frame = pd.DataFrame(rows, columns=[*head, *middle, *tail])
    # A calibration figure only ensembles have stays; one no model has (all missing) goes.
    optional = [key for key in middle if frame[key].isna().all()]
    return frame.drop(columns=optional)


def _properties_in(results: Iterable[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for result in results:
        for name in result.get("predictions") or {}:
            names.setdefault(name)
    return list(names)


def _number(value: Any) -> float:
    # JSON has no NaN: the service sends null for "no uncertainty" and for a non-finite prediction.
    if value is None:
        return math.nan
    return float(value)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
