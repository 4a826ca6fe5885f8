"""Response bodies of the prediction endpoints: JSON in one piece, CSV and NDJSON streamed.

orjson serialises the result dataclasses directly (no per-row dict or pydantic object), which
is what keeps a 100,000-formula answer cheap next to the model's own work.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import orjson
from starlette.responses import Response

from app.api.spreadsheet import defused
from app.errors import DomainError, NotAcceptableError
from app.inference.predictor import ItemError, PredictionResult, Result
from app.stability.assess import E_ABOVE_HULL, StabilityPrediction

Format = Literal["json", "csv", "ndjson"]
_F = TypeVar("_F", bound=str)
MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
_ACCEPTED: dict[str, Format] = {
    "application/json": "json",
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
}


def _default(value: Any) -> Any:
    if isinstance(value, DomainError):
        return value.to_dict()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(payload: Any) -> bytes:
    return orjson.dumps(payload, default=_default)


def json_response(payload: Any, status_code: int = 200) -> Response:
    return Response(dumps(payload), status_code=status_code, media_type="application/json")


JSON_ONLY: dict[str, Literal["json"]] = {"application/json": "json"}  # what /predict sends


def negotiate(accept: str | None) -> Format:
    """The client's preferred prediction format (JSON without an Accept header); 406 if none."""
    return preferred(accept, _ACCEPTED, "json")


def preferred(accept: str | None, accepted: Mapping[str, _F], default: _F) -> _F:
    """The Accept header's choice among `accepted` media types by q-value (the first listed on a
    tie); a wildcard (``*/*``, ``text/*``) stands for `default` or the first type it covers.
    406 ``not_acceptable`` when the header names none of them (``image/png``, ``application/json;
    q=0``): answering JSON to a client that said it cannot read JSON only moves the failure.
    No header, or an empty one, is `default`."""
    if accept is None or not accept.strip():
        return default
    best: tuple[float, _F] | None = None
    refused: set[_F] = set()  # named with q=0: not even a wildcard brings them back
    offers: list[tuple[float, list[_F]]] = []
    for item in accept.split(","):
        media_type, *parameters = (part.strip().lower() for part in item.split(";"))
        quality = _quality(parameters)
        if media_type == "*/*":
            chosen = [default, *accepted.values()]
        elif media_type.endswith("/*"):
            chosen = [f for name, f in accepted.items() if name.startswith(media_type[:-1])]
        else:
            chosen = [accepted[media_type]] if media_type in accepted else []
        if quality <= 0:
            if "*" not in media_type:
                refused.update(chosen)
            continue
        offers.append((quality, chosen))
    for quality, chosen in offers:
        usable = next((f for f in chosen if f not in refused), None)
        if usable is not None and (best is None or quality > best[0]):
            best = (quality, usable)
    if best is None:
        raise NotAcceptableError(
            "not_acceptable", f"Accept {accept[:200]!r} names none of the formats sent here: "
            f"{', '.join(accepted)}", accepted=list(accepted),
        )  # fmt: skip
    return best[1]


def _quality(parameters: Sequence[str]) -> float:
    for parameter in parameters:
        name, _, number = parameter.partition("=")
        if name.strip() == "q":
            try:
                return float(number)
            except ValueError:
                return 0.0
    return 1.0


async def stream_ndjson(chunks: AsyncIterator[list[Result]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield b"".join(dumps(result) + b"\n" for result in chunk)


# Every property's columns (_low/_high: the prediction interval, at the level model.json records);
# a stability answer adds its own after them.
# _in_domain: inside the model's training domain (empty: not recorded); _domain_code and
# _domain_warning: why not (the code a program tests, the message a person reads).
_PROPERTY_COLUMNS = (
    *("", "_uncertainty", "_low", "_high", "_unit", "_model", "_version", "_cached"),
    *("_in_domain", "_domain_code", "_domain_warning"),
)
_STABILITY_COLUMNS = (
    "p_stable",
    "decomposition",
    "known",
    "reference_value",
    "reference",
    "e_above_hull_error",
)


def csv_header(properties: Sequence[str]) -> list[str]:
    header = ["formula", "composition"]
    for name in properties:
        header += [f"{name}{suffix}" for suffix in _PROPERTY_COLUMNS]
        if name == E_ABOVE_HULL:
            header += _STABILITY_COLUMNS
    return [*header, "error_code", "error_message"]


def csv_row(result: Result, properties: Sequence[str]) -> list[Any]:
    if isinstance(result, ItemError):
        width = len(csv_header(properties)) - 4
        error = result.error
        return [defused(result.formula), "", *([""] * width), error.code, defused(error.message)]
    assert isinstance(result, PredictionResult)
    row: list[Any] = [defused(result.formula), result.composition]
    for name in properties:
        p = result.predictions[name]
        row += [
            "" if p.value is None else repr(p.value),
            "" if p.uncertainty is None else repr(p.uncertainty),
            "" if p.interval is None else repr(p.interval.low),
            "" if p.interval is None else repr(p.interval.high),
            p.unit,
            p.model,
            p.version,
            "true" if p.cached else "false",
            "" if p.in_domain is None else ("true" if p.in_domain else "false"),
            "" if p.domain_warning is None else p.domain_warning["code"],
            "" if p.domain_warning is None else p.domain_warning["message"],
        ]
        if isinstance(p, StabilityPrediction):
            row += [
                "" if p.p_stable is None else repr(p.p_stable),
                " + ".join(f"{share:.4g} {phase}" for phase, share in (p.decomposition or {}).items()),
                "true" if p.known else "false",
                "" if p.reference_value is None else repr(p.reference_value),
                f"{p.reference['name']} {p.reference['sha256']}",
                "" if p.error is None else p.error["code"],  # why there is no value
            ]
    return [*row, "", ""]


async def stream_csv(chunks: AsyncIterator[list[Result]], properties: Sequence[str]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(properties))
    async for chunk in chunks:
        writer.writerows(csv_row(result, properties) for result in chunk)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
