"""``ibrnet predict FORMULA...``: predictions without a server or a database.

The same registry, parser and featurizer as the service, calling ONNX Runtime directly.
Exit status 1 when any formula was refused (each refusal is shown on its row with its code).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from app.chemistry.formula import clip_formula
from app.errors import DomainError
from app.inference.predictor import (
    ItemError,
    PredictionResult,
    Predictor,
    PropertyPrediction,
)
from app.inference.registry import ModelRegistry
from app.settings import get_settings
from app.stability.assess import StabilityPrediction
from app.stability.service import load_stability


def local_predictor(models_dir: Path | None, warn: Callable[[str], None]) -> Predictor:
    """A predictor over ``models_dir`` (default: IBRNET_MODELS_DIR) for this process: no server, no
    cache, the same IBRNET_* settings as ``ibrnet serve`` (stability included). ``warn`` hears of
    every model folder that was skipped, and why."""
    settings = get_settings()
    registry = ModelRegistry.load(
        models_dir or settings.models_dir,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
        warmup_rows=1,
    )
    for folder, reason in registry.failures.items():
        warn(f"ibrnet: skipped model {folder}: {reason}")
    stability = load_stability(settings, registry)
    return Predictor(registry, max_formula_length=settings.max_formula_length, stability=stability)


def run(args: argparse.Namespace) -> int:
    predictor = local_predictor(
        Path(args.models) if args.models else None, lambda line: print(line, file=sys.stderr)
    )
    try:
        outputs = list(predictor.plan(args.properties or None).outputs)
    except DomainError as error:
        print(f"ibrnet: {error.code}: {error.message}", file=sys.stderr)
        return 2

    results = predict(predictor, args.formulas, outputs)
    if args.json:
        print(json.dumps({"results": [result.to_dict() for result in results]}, indent=2, ensure_ascii=False))
    else:
        print(render_table(results, outputs))
    return 1 if any(isinstance(result, ItemError) for result in results) else 0


def predict(
    predictor: Predictor, formulas: list[str], properties: list[str] | None
) -> list[PredictionResult | ItemError]:
    """The service's answers for ``formulas``, computed in this process (no cache, no batcher)."""
    plan = predictor.plan(properties)
    formulas = [clip_formula(text, predictor.max_formula_length) for text in formulas]  # as echoed
    parsed = [predictor.parse(text, plan.allowed) for text in formulas]
    good = [item for item in parsed if not isinstance(item, DomainError)]
    outputs = predictor.predict_parsed(good, [model.property for model in plan.models])
    answers = []
    for row in range(len(good)):
        answers.append({})
        for model in plan.models:
            value, uncertainty = (float(v) for v in outputs[model.property][row])
            answers[-1][model.property] = model.answer(value, uncertainty, cached=False, formula=good[row])
    derived = predictor.derive_sync(plan, good, answers)
    shaped = iter(
        predictor.shape(plan, answer, extra) for answer, extra in zip(answers, derived, strict=True)
    )
    results: list[PredictionResult | ItemError] = []
    for text, item in zip(formulas, parsed, strict=True):
        if isinstance(item, DomainError):
            results.append(ItemError(text, item))
        else:
            results.append(PredictionResult(text, item.canonical_key, next(shaped)))
    return results


OUTSIDE_MARK = "*"  # beside an answer outside its model's training domain


def render_table(results: list[PredictionResult | ItemError], properties: list[str]) -> str:
    units = {}
    for result in results:
        if isinstance(result, PredictionResult):
            units = {name: p.unit for name, p in result.predictions.items()}
            break
    header = ["formula", "composition", *(f"{name} ({units.get(name, '?')})" for name in properties)]
    rows: list[list[str]] = []
    for result in results:
        if isinstance(result, ItemError):
            rows.append([result.formula, f"error {result.error.code}: {result.error.message}"])
        else:
            rows.append(
                [result.formula, result.composition, *(_cell(result.predictions[n]) for n in properties)]
            )
    widths = [len(title) for title in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(title.ljust(w) for title, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(header):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        else:  # an error row: formula, then the message across the remaining columns
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
    if any(cell.endswith(OUTSIDE_MARK) for row in rows for cell in row[2:]):
        lines.append(
            f"{OUTSIDE_MARK} outside the model's training domain: an extrapolation (--json says why)"
        )
    return "\n".join(lines)


def _cell(prediction: PropertyPrediction | StabilityPrediction) -> str:
    if prediction.value is None:
        return "n/a"
    text = f"{prediction.value:.4f}"
    if prediction.uncertainty is not None:
        text = f"{text} ± {prediction.uncertainty:.4f}"
    if isinstance(prediction, StabilityPrediction) and prediction.p_stable is not None:
        # A stability answer is read by its probability first; "known" says it is in the reference.
        text = f"{text} p_stable {prediction.p_stable:.2f}{' known' if prediction.known else ''}"
    return f"{text} {OUTSIDE_MARK}" if prediction.in_domain is False else text
