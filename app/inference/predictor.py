"""Formulas in, predictions out: parse once, then let the batchers do the rest.

``predict_chunks`` is the one pipeline behind /predict, /predict/batch and their streamed
forms. Each formula is parsed once (checked against the elements every requested model
accepts); the distinct compositions go to the DynamicBatcher of each feature set the requested
models read (one for the shipped models, which all read ef+pa), whose batch work
(app/inference/batch_work.py) looks them up in the cache, featurizes the misses once, runs each
model and hands new rows to the writer, per batch. Large inputs go
through in chunks: while ONNX Runtime works on one chunk (without the GIL), the next one is
parsed, so a large batch keeps the model busy instead of alternating between Python and ORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from app.chemistry.formula import MAX_FORMULA_LENGTH, ParsedFormula, clip_formula, parse_formula
from app.errors import DomainError
from app.inference.batch_work import Answer, PredictionRequest, feature_sets, predict_formulas
from app.inference.batcher import DynamicBatcher
from app.inference.cache import PredictionCache
from app.inference.metrics import ServiceMetrics
from app.inference.registry import LoadedModel, ModelRegistry
from app.inference.results import ItemError, PredictionResult, PropertyPrediction, Result
from app.memo import BytesBoundedMemo
from app.stability.assess import E_ABOVE_HULL, SOURCE_PROPERTY, StabilityAssessor, models_to_run
from app.store.predictions import PredictionStore
from app.store.writer import CacheWriter

__all__ = [
    "ItemError",
    "Plan",
    "PredictionResult",
    "Predictor",
    "PropertyPrediction",
    "Result",
    "allowed_elements",
]

logger = logging.getLogger(__name__)

# Formulas per pipeline step: large enough that per-chunk overhead (a cache query, a task) is
# noise, small enough that parsing the next chunk overlaps the model's work on this one.
CHUNK_SIZE = 1024
# Chunks in flight at once: bounds memory for a 100,000-formula batch while keeping ORT fed.
PIPELINE_DEPTH = 4
# Chunks up to this size are parsed on the event loop; larger ones in a thread, so that a big
# batch never stalls the single-formula requests sharing the loop for long.
INLINE_PARSE_LIMIT = 32
# Repeated formulas (dashboards, retries, warm caches) skip the parser: a memo bounded in bytes of
# formula text (app/memo.py), so refused megabyte-long formulas cannot fill the memory.
PARSE_MEMO_BYTES = 32 * 1024 * 1024
# Rows assessed for stability on the event loop when their hulls are built (~30 µs each); more go
# to a thread.
INLINE_DERIVE_LIMIT = 32
# Rows per direct ORT call on the synchronous path (screening, CLI).
DIRECT_CHUNK_SIZE = 8192


class InferenceFailed(DomainError):
    status_code = 503


@dataclass(frozen=True)
class Plan:
    """What a request computes: the models to run and the properties it answers, in order.

    ``e_above_hull`` is derived from the Materials Project formation-energy model, which runs
    whenever stability is asked for, and is answered only when asked for itself (``outputs``).
    """

    models: tuple[LoadedModel, ...]
    allowed: frozenset[str]
    outputs: tuple[str, ...]  # answered properties, derived ones included
    stability: bool  # e_above_hull is among the outputs


class Predictor:
    def __init__(
        self,
        registry: ModelRegistry,
        store: PredictionStore | None = None,
        writer: CacheWriter | None = None,
        batchers: Mapping[str, DynamicBatcher[PredictionRequest, Answer]] | None = None,
        metrics: ServiceMetrics | None = None,
        *,
        cache: PredictionCache | None = None,
        max_formula_length: int = MAX_FORMULA_LENGTH,
        stability: StabilityAssessor | None = None,
    ) -> None:
        """Without a store (CLI, screening workers) nothing is cached; without batchers only the
        synchronous ``predict_parsed`` path is available. The batchers do the cache lookups:
        give them and the predictor the same ``cache`` (see ``Services.start``). With
        ``stability`` (a hull reference), ``e_above_hull`` is answered from the
        formation_energy_mp model's predictions."""
        self.registry = registry
        self.metrics = metrics or ServiceMetrics()
        if cache is None and store is not None:
            cache = PredictionCache(store, writer, self.metrics)
        self.cache = cache
        self.batchers = dict(batchers or {})
        self.max_formula_length = max_formula_length
        self.stability = stability
        self._memo = BytesBoundedMemo(self._parse_uncached, PARSE_MEMO_BYTES, lambda text, _: text)
        self._plans = lru_cache(maxsize=256)(self._plan_uncached)
        # Metric children resolved once (.labels() takes a lock and a dict lookup on every call).
        hits = self.metrics.cache_hits
        self._hits = {m.property: hits.labels(property=m.property) for m in registry.models}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    # -- which models ------------------------------------------------------------------------

    def resolve(self, properties: Sequence[str] | None) -> list[LoadedModel]:
        """Models to run for ``properties`` (all when None); raises unknown_property before any work."""
        return list(self.plan(properties).models)

    def plan(self, properties: Sequence[str] | None) -> Plan:
        """The models to run and the properties to answer; unknown properties raise here."""
        return self._plans(None if properties is None else tuple(properties))

    def served_properties(self) -> list[str]:
        """Every property this predictor answers, derived ones included (what ``None`` means)."""
        return list(self.plan(None).outputs)

    def _plan_uncached(self, properties: tuple[str, ...] | None) -> Plan:
        to_run, wants_stability = models_to_run(
            properties, self.registry.by_property, self.stability is not None
        )
        models = tuple(self.registry.resolve(to_run))
        if not models:
            raise InferenceFailed("no_models", "no model is loaded; see GET /ready for the reasons")
        answered = [m.property for m in models if properties is None or m.property in properties]
        outputs = (*answered, E_ABOVE_HULL) if wants_stability else tuple(answered)
        if properties is not None:  # the caller's order
            outputs = tuple(name for name in dict.fromkeys(properties) if name in outputs)
        return Plan(models, allowed_elements(models), outputs, wants_stability)

    # -- the asynchronous service path -------------------------------------------------------

    async def predict_one(self, formula: str, properties: Sequence[str] | None) -> PredictionResult:
        """One formula; a bad one raises its DomainError (the HTTP layer makes it a 4xx)."""
        plan = self.plan(properties)
        parsed = self._parse(formula, plan.allowed)
        if isinstance(parsed, DomainError):
            self.metrics.formula_errors.labels(code=parsed.code).inc()
            raise parsed
        answers = self._remembered(plan.models, parsed)
        if answers is None:
            computed = await self._answers(plan.models, [parsed])
            answers = {model.property: answer[0] for model, answer in zip(plan.models, computed, strict=True)}
        derived = await self._derive(plan, [parsed], [answers])
        return PredictionResult(formula, parsed.canonical_key, self.shape(plan, answers, derived[0]))

    async def _derive(
        self,
        plan: Plan,
        formulas: Sequence[ParsedFormula],
        answers: Sequence[Mapping[str, PropertyPrediction]],
    ) -> list[Mapping[str, object]]:
        """Derived properties per formula (``e_above_hull``), or empty mappings when none is asked.

        A few rows whose hulls are built are assessed on the event loop (~30 µs a row); a chunk, or
        a chemical system seen for the first time, goes to a thread, so it never stalls others.
        """
        if not plan.stability or not formulas:
            return [{}] * len(formulas)
        assert self.stability is not None
        amounts = [formula.amount_dict for formula in formulas]
        if len(formulas) <= INLINE_DERIVE_LIMIT and self.stability.hull_ready(amounts):
            return self.derive_sync(plan, formulas, answers)
        return await asyncio.to_thread(self.derive_sync, plan, formulas, answers)

    def derive_sync(
        self,
        plan: Plan,
        formulas: Sequence[ParsedFormula],
        answers: Sequence[Mapping[str, PropertyPrediction]],
    ) -> list[Mapping[str, object]]:
        """``_derive`` on the caller's thread (the CLI, in-process predictions)."""
        if not plan.stability or not formulas:
            return [{}] * len(formulas)
        assert self.stability is not None
        assessed = self.stability.assess(
            [formula.canonical_key for formula in formulas],
            [formula.amount_dict for formula in formulas],
            [answer[SOURCE_PROPERTY] for answer in answers],
        )
        return [{E_ABOVE_HULL: answer} for answer in assessed]

    @staticmethod
    def shape(
        plan: Plan, answers: Mapping[str, PropertyPrediction], derived: Mapping[str, object]
    ) -> dict[str, PropertyPrediction]:
        """The answered properties in the plan's order (a model run only for a derived one is left out)."""
        merged = {**answers, **derived}
        return {name: merged[name] for name in plan.outputs}  # type: ignore[misc]

    def _remembered(
        self, models: Sequence[LoadedModel], formula: ParsedFormula
    ) -> dict[str, PropertyPrediction] | None:
        """Every model's answer from process memory, or None if one is missing: a repeat costs
        no batcher round trip and no thread hand-off (app/inference/recent.py)."""
        if self.cache is None:
            return None
        answers: dict[str, PropertyPrediction] = {}
        for model in models:
            row = self.cache.recall(model.cache_version, formula.canonical_key)
            if row is None:
                return None
            answers[model.property] = model.answer(row.value, row.uncertainty, cached=True, formula=formula)
        for model in models:
            self._hits[model.property].inc()
        return answers

    async def predict_many(self, formulas: Sequence[str], properties: Sequence[str] | None) -> list[Result]:
        results: list[Result] = []
        async for chunk in self.predict_chunks(formulas, self.plan(properties)):
            results.extend(chunk)
        return results

    async def predict_chunks(self, formulas: Sequence[str], plan: Plan) -> AsyncIterator[list[Result]]:
        """Results in input order, one list per chunk, as soon as each chunk is done."""
        allowed = plan.allowed
        # Each result echoes its formula: one over the limit is echoed as its first characters.
        formulas = [clip_formula(text, self.max_formula_length) for text in formulas]
        if len(formulas) <= CHUNK_SIZE:
            if len(formulas) <= INLINE_PARSE_LIMIT:
                parsed = self._parse_all(formulas, allowed)
            else:
                parsed = await asyncio.to_thread(self._parse_all, formulas, allowed)
            yield await self._predict_parsed(formulas, parsed, plan)
            return
        in_flight: deque[asyncio.Task[list[Result]]] = deque()
        try:
            for start in range(0, len(formulas), CHUNK_SIZE):
                texts = formulas[start : start + CHUNK_SIZE]
                parsed = await asyncio.to_thread(self._parse_all, texts, allowed)
                in_flight.append(asyncio.create_task(self._predict_parsed(texts, parsed, plan)))
                while len(in_flight) >= PIPELINE_DEPTH or (in_flight and in_flight[0].done()):
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            for task in in_flight:  # the consumer stopped early (client went away)
                task.cancel()
            for task in in_flight:
                with contextlib.suppress(BaseException):
                    await task

    async def _predict_parsed(
        self,
        texts: Sequence[str],
        parsed: Sequence[ParsedFormula | DomainError],
        plan: Plan,
    ) -> list[Result]:
        unique: dict[str, ParsedFormula] = {}
        for item in parsed:
            if isinstance(item, ParsedFormula):
                unique.setdefault(item.canonical_key, item)
        distinct = list(unique.values())
        computed = await self._answers(plan.models, distinct)
        answers = [
            {model.property: column[row] for model, column in zip(plan.models, computed, strict=True)}
            for row in range(len(distinct))
        ]
        derived = await self._derive(plan, distinct, answers)
        shaped = {
            key: self.shape(plan, answer, extra)
            for key, answer, extra in zip(unique, answers, derived, strict=True)
        }

        results: list[Result] = []
        for text, item in zip(texts, parsed, strict=True):
            if isinstance(item, DomainError):
                results.append(ItemError(text, item))
                continue
            results.append(PredictionResult(text, item.canonical_key, shaped[item.canonical_key]))
        return results

    async def _answers(
        self, models: Sequence[LoadedModel], formulas: list[ParsedFormula]
    ) -> list[list[PropertyPrediction]]:
        """Each model's predictions for ``formulas`` (distinct compositions), in that order: one
        submission per feature set, so the models reading the same features share one featurization."""
        try:
            groups = feature_sets(models)
            answered = await asyncio.gather(
                *(
                    predict_formulas(self.batchers[spec], formulas, tuple(group))
                    for spec, group in groups.items()
                )
            )
            merged = {name: answer for answers in answered for name, answer in answers.items()}
            return [merged[model.property] for model in models]
        except DomainError:
            raise
        except Exception as error:
            logger.exception("inference failed")
            raise InferenceFailed(
                "inference_failed", f"a model failed to answer: {type(error).__name__}; see the service log"
            ) from error

    # -- parsing -----------------------------------------------------------------------------

    def parse(self, text: str, allowed: frozenset[str]) -> ParsedFormula | DomainError:
        """One formula, checked against ``allowed`` (see ``allowed_elements``); errors are returned."""
        return self._parse(text, allowed)

    def _parse_all(self, texts: Sequence[str], allowed: frozenset[str]) -> list[ParsedFormula | DomainError]:
        parsed = [self._parse(text, allowed) for text in texts]
        for item in parsed:
            if isinstance(item, DomainError):
                self.metrics.formula_errors.labels(code=item.code).inc()
        return parsed

    def _parse(self, text: str, allowed: frozenset[str]) -> ParsedFormula | DomainError:
        # A text over the length limit is refused at once: nothing to save by keeping it. A
        # non-string item (NotAString) equals its JSON text, so it must not share that text's memo.
        if len(text) > self.max_formula_length or type(text) is not str:
            return self._parse_uncached(text, allowed)
        return self._memo(text, allowed)

    def _parse_uncached(self, text: str, allowed: frozenset[str]) -> ParsedFormula | DomainError:
        try:
            return parse_formula(text, allowed_elements=allowed, max_length=self.max_formula_length)
        except DomainError as error:
            return error
        except Exception as error:  # a parser bug must cost one item, never the request
            logger.warning("unexpected %s while parsing %r", type(error).__name__, text[:80])
            return DomainError("invalid_formula", f"cannot parse formula {text[:80]!r}", formula=text[:80])

    # -- the synchronous path (screening, CLI) ------------------------------------------------

    def predict_parsed(
        self, parsed: Sequence[ParsedFormula], properties: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """property -> float32 [n, 2] (value, standard deviation or NaN); no cache, no batcher.

        The formulas must already be inside every selected model's elements (parse them with
        ``allowed_elements(models)``).
        """
        results: dict[str, np.ndarray] = {}
        for model in self.resolve(properties):
            out = np.empty((len(parsed), 2), dtype=np.float32)
            for start in range(0, len(parsed), DIRECT_CHUNK_SIZE):
                chunk = parsed[start : start + DIRECT_CHUNK_SIZE]
                counts = np.fromiter((len(formula.elements) for formula in chunk), np.int64, len(chunk))
                out[start : start + len(chunk)] = model.predict(model.featurizer.transform(chunk), counts)
            results[model.property] = out
        return results


def allowed_elements(models: Sequence[LoadedModel]) -> frozenset[str]:
    """Elements every one of ``models`` can featurize: a formula must stay inside all of them."""
    if not models:
        return frozenset()
    return frozenset.intersection(*(model.elements for model in models))
