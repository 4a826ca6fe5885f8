"""One batch of predictions for the models that read one feature set (the batcher's ``process``).

Per batch, whatever the requests in it asked for:
- one cache lookup per model for the distinct compositions it was asked about;
- ONE featurizer call for the compositions any model missed (the shipped models all read
  ``ef+pa``: a formula new to all three is featurized once, not three times);
- one ONNX Runtime call per model, on its misses only;
- one hand-off of each model's new rows to the cache writer;
- each request's answer: property -> one PropertyPrediction per formula, in its order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.chemistry.featurizers import Featurizer
from app.chemistry.formula import ParsedFormula
from app.inference.batcher import DynamicBatcher, Queued
from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.registry import LoadedModel
from app.inference.results import PropertyPrediction
from app.store.predictions import CachedPrediction

Answer = dict[str, list[PropertyPrediction]]  # property -> one prediction per formula
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PredictionRequest:
    formulas: Sequence[ParsedFormula]  # distinct compositions
    models: tuple[LoadedModel, ...]  # every one reads the work's feature set


class _ModelMetrics:
    """One model's metric children, resolved once (.labels() takes a lock and a dict lookup)."""

    def __init__(self, metrics: ServiceMetrics, model: LoadedModel) -> None:
        self.batch_size = metrics.batch_size.labels(model=model.name)
        self.submissions = metrics.batch_submissions.labels(model=model.name)
        self.queue_seconds = metrics.batch_queue_seconds.labels(model=model.name)
        self.inference_seconds = metrics.inference_seconds.labels(model=model.name)
        self.failures = metrics.inference_failures.labels(model=model.name)
        self.hits = metrics.cache_hits.labels(property=model.property)
        self.misses = metrics.cache_misses.labels(property=model.property)


class PredictionWork:
    def __init__(
        self, featurizer: Featurizer, metrics: ServiceMetrics, cache: PredictionCache | None
    ) -> None:
        self.featurizer = featurizer
        self.metrics = metrics
        self.cache = cache
        self._children: dict[str, _ModelMetrics] = {}

    def __call__(self, batch: list[Queued[PredictionRequest]]) -> list[Answer | Exception]:
        """One answer per submission; an exception (delivered to that submitter) where a model it asked
        for failed: the other submissions of the batch are answered all the same."""
        started = time.perf_counter()
        models: dict[str, LoadedModel] = {}
        asked: dict[str, dict[str, ParsedFormula]] = {}  # property -> composition key -> formula
        for submission in batch:
            for model in submission.payload.models:
                models.setdefault(model.property, model)
                children = self._metrics(model)
                children.submissions.inc()
                children.queue_seconds.observe(started - submission.queued_at)
                keys = asked.setdefault(model.property, {})
                for formula in submission.payload.formulas:
                    keys.setdefault(formula.canonical_key, formula)

        predictions: dict[str, dict[str, PropertyPrediction]] = {}
        missed: dict[str, list[str]] = {}
        failed: dict[str, Exception] = {}  # a model that failed fails its own callers only
        for name, model in models.items():
            try:
                predictions[name], missed[name] = self._recall(model, asked[name])
            except Exception as error:
                failed[name] = error

        # Every model's misses, featurized together once.
        to_featurize: dict[str, ParsedFormula] = {}
        for name, keys in missed.items():
            for key in keys:
                to_featurize.setdefault(key, asked[name][key])
        try:
            features = self.featurizer.transform(list(to_featurize.values())) if to_featurize else None
        except Exception as error:
            for name, keys in missed.items():
                if keys:
                    self._metrics(models[name]).failures.inc()
                    failed[name] = error
            features = None
        row_of = {key: row for row, key in enumerate(to_featurize)}
        for name, keys in missed.items():
            if keys and features is not None and name not in failed:
                rows = np.fromiter((row_of[key] for key in keys), dtype=np.intp, count=len(keys))
                own = features if np.array_equal(rows, np.arange(len(features))) else features[rows]
                try:
                    formulas = [asked[name][key] for key in keys]
                    predictions[name].update(self._compute(models[name], formulas, own))
                except Exception as error:
                    failed[name] = error
        if failed:
            logger.error(
                "batch work: %s failed: %s", ", ".join(failed), "; ".join(map(repr, failed.values()))
            )

        answers: list[Answer | Exception] = []
        for submission in batch:
            request = submission.payload
            error = next((failed[m.property] for m in request.models if m.property in failed), None)
            answers.append(
                error
                if error is not None
                else {
                    m.property: [predictions[m.property][f.canonical_key] for f in request.formulas]
                    for m in request.models
                }
            )
        return answers

    def _recall(
        self, model: LoadedModel, keys: dict[str, ParsedFormula]
    ) -> tuple[dict[str, PropertyPrediction], list[str]]:
        """The cached answers, and the keys the cache does not hold."""
        cached = self.cache.lookup(model.cache_version, list(keys)) if self.cache is not None else {}
        answers = {
            key: model.answer(row.value, row.uncertainty, cached=True, formula=keys[key])
            for key, row in cached.items()
        }
        misses = [key for key in keys if key not in cached]
        children = self._metrics(model)
        if cached:
            children.hits.inc(len(cached))
        if misses:
            children.misses.inc(len(misses))
        return answers, misses

    def _compute(
        self, model: LoadedModel, formulas: list[ParsedFormula], features: np.ndarray
    ) -> dict[str, PropertyPrediction]:
        """One ONNX Runtime call; its rows go to the cache writer."""
        children = self._metrics(model)
        started = time.perf_counter()
        counts = np.fromiter((len(formula.elements) for formula in formulas), np.int64, len(formulas))
        try:
            outputs = model.predict(features, counts)
        except Exception:
            children.failures.inc()
            raise
        children.inference_seconds.observe(time.perf_counter() - started)
        children.batch_size.observe(len(formulas))
        fresh: dict[str, CachedPrediction] = {}
        answers: dict[str, PropertyPrediction] = {}
        for formula, (value, uncertainty) in zip(formulas, outputs.tolist(), strict=True):
            row = CachedPrediction(value, None if math.isnan(uncertainty) else uncertainty)
            fresh[formula.canonical_key] = row
            answers[formula.canonical_key] = model.answer(
                row.value, row.uncertainty, cached=False, formula=formula
            )
        if self.cache is not None:
            self.cache.save(model.cache_version, fresh)
        return answers

    def _metrics(self, model: LoadedModel) -> _ModelMetrics:
        children = self._children.get(model.name)
        if children is None:
            children = self._children[model.name] = _ModelMetrics(self.metrics, model)
        return children


def feature_sets(models: Sequence[LoadedModel]) -> dict[str, list[LoadedModel]]:
    """Models grouped by the features they read (one batcher, one featurization per group)."""
    groups: dict[str, list[LoadedModel]] = {}
    for model in models:
        groups.setdefault(model.featurizer.name, []).append(model)
    return groups


def prediction_batchers(
    models: Sequence[LoadedModel],
    metrics: ServiceMetrics,
    cache: PredictionCache | None,
    *,
    max_size: int,
    max_wait_ms: float,
) -> dict[str, DynamicBatcher[PredictionRequest, Answer]]:
    """feature set -> its batcher (not started)."""
    return {
        spec: DynamicBatcher[PredictionRequest, Answer](
            spec,
            PredictionWork(group[0].featurizer, metrics, cache),
            max_size=max_size,
            max_wait_ms=max_wait_ms,
        )
        for spec, group in feature_sets(models).items()
    }


async def predict_formulas(
    batcher: DynamicBatcher[PredictionRequest, Answer],
    formulas: Sequence[ParsedFormula],
    models: tuple[LoadedModel, ...],
) -> Answer:
    """``models``' predictions for ``formulas`` (distinct compositions), through the batcher; a list
    longer than the batcher's ``max_size`` goes as several submissions."""
    if not formulas:
        return {model.property: [] for model in models}
    size = batcher.max_size
    parts = [formulas[i : i + size] for i in range(0, len(formulas), size)]
    answers = await asyncio.gather(
        *(batcher.submit(PredictionRequest(part, models), len(part)) for part in parts)
    )
    if len(answers) == 1:
        return answers[0]
    return {model.property: [p for answer in answers for p in answer[model.property]] for model in models}
