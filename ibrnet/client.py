"""``ibrnet.Client``: the HTTP API as pandas DataFrames, for notebooks and scripts.

Long lists are cut into requests that fit the service's limits (GET /limits), sent by a few
threads sharing one ``httpx.Client`` (threads, not asyncio: a notebook already runs an event loop
of its own), and put back together in input order. Every request is retried per ``RetryPolicy``,
so a service restart in the middle of a million-formula predict costs a pause, not the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Container, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx
import pandas as pd
from tqdm.auto import tqdm

from ibrnet.batches import BatchLimits, plan_chunks, request_body
from ibrnet.errors import ServiceError
from ibrnet.frames import models_frame, results_frame
from ibrnet.inputs import as_formulas, as_properties
from ibrnet.retry import RetryPolicy, send_with_retries

DEFAULT_URL = "http://127.0.0.1:8000"
# Reads may be long (a big batch on a CPU); connecting should never be.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Formulas per request unless the service allows fewer: big enough that per-request overhead is
# small, small enough that the progress bar moves and a retried request repeats little work.
DEFAULT_BATCH_SIZE = 2000
# Requests in flight at once: enough to keep the service's dynamic batcher fed.
DEFAULT_CONCURRENCY = 4
# Rows per GET /screen/{id}/results page (the service's largest page).
RESULTS_PAGE = 10_000
_JSON = {"content-type": "application/json"}
# Probes (health, ready) report the service's state now; retrying would hide it.
_ONCE = RetryPolicy(attempts=1)


class Client:
    """A connection to an ibrnet service.

    ``api_key`` is sent as ``X-API-Key`` on every request. ``timeout`` (seconds, or an
    ``httpx.Timeout``) bounds each request; ``retry`` says how often and how long a refused or
    failed request is tried again (default: about 30-60 s, enough to ride out a restart).
    ``concurrency`` and ``batch_size`` are the defaults of ``predict``. Close it with ``close()``
    or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.batch_size = batch_size
        headers = {"user-agent": "ibrnet-client"}
        if api_key is not None:
            headers["x-api-key"] = api_key
        # One httpx.Client (thread-safe) for every thread: its pool keeps connections alive.
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self._lock = threading.Lock()
        self._limits: BatchLimits | None = None

    def __repr__(self) -> str:
        return f"ibrnet.Client({self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- predictions -------------------------------------------------------------------------

    def predict(
        self,
        formulas: str | Iterable[Any],
        properties: str | Iterable[str] | None = None,
        *,
        progress: bool = True,
        concurrency: int | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Predict ``properties`` (default: every served one) of ``formulas``.

        Returns one row per formula, in input order: ``formula``, ``composition``, ``<property>``,
        ``<property>_uncertainty`` for each property (``<property>_low`` / ``_high`` where the service
        sends intervals), ``error_code`` and ``error_message`` (set only on rows the service refused:
        a bad formula never raises). ``frame.attrs["models"]`` names the model and version behind
        each property.

        The list is sent as requests of at most ``batch_size`` formulas (fewer if the service's
        limits say so), ``concurrency`` at a time, with a progress bar unless ``progress=False``.
        Raises ServiceError when the service refuses the request itself (unknown property: 422
        ``unknown_property``; a missing key: 401) or stays unreachable past the retry budget.
        """
        texts = as_formulas(formulas)
        names = as_properties(properties)
        workers = concurrency or self.concurrency
        if workers < 1:
            raise ValueError("concurrency must be at least 1")
        limits = self._batch_limits()
        per_request = min(batch_size or self.batch_size, limits.max_items)
        chunks = plan_chunks(texts, names, BatchLimits(per_request, limits.max_body_bytes))
        results = self._predict_chunks(texts, names, chunks, progress=progress, concurrency=workers)
        if names is None and not any("predictions" in result for result in results):
            # Nothing predicted (every formula refused, or none given): the columns still name
            # every served property, as they would have otherwise.
            names = self._served_properties()
        return results_frame(results, names)

    def _predict_chunks(
        self,
        texts: list[str],
        properties: list[str] | None,
        chunks: list[range],
        *,
        progress: bool,
        concurrency: int,
    ) -> list[dict[str, Any]]:
        answers: list[list[dict[str, Any]]] = [[] for _ in chunks]
        # Set when this call is abandoned (an error elsewhere, Ctrl-C): threads still waiting to
        # retry give up instead of sending requests nobody will read.
        stop = threading.Event()
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(concurrency, len(chunks))), thread_name_prefix="ibrnet"
        )
        with tqdm(total=len(texts), unit="formula", desc="ibrnet predict", disable=not progress) as bar:
            try:
                futures: dict[Future[list[dict[str, Any]]], int] = {
                    pool.submit(
                        self._predict_chunk, texts[chunk.start : chunk.stop], properties, stop
                    ): number
                    for number, chunk in enumerate(chunks)
                }
                for future in as_completed(futures):
                    number = futures[future]
                    answers[number] = future.result()
                    bar.update(len(chunks[number]))
            except BaseException:
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        pool.shutdown()
        return [result for answer in answers for result in answer]

    def _predict_chunk(
        self, formulas: list[str], properties: list[str] | None, stop: threading.Event
    ) -> list[dict[str, Any]]:
        try:
            response = self._request(
                "POST", "/predict/batch", content=request_body(formulas, properties), headers=_JSON, stop=stop
            )
        except ServiceError as error:
            if error.status != 413:
                raise
            if len(formulas) == 1:
                # One formula too large for any request: the service's refusal is its row.
                refusal = {"code": error.code, "message": error.message, **error.details}
                return [{"formula": formulas[0], "error": refusal}]
            # The limits shrank under us (a restart with new settings): halve, and read them again
            # for the next call.
            with self._lock:
                self._limits = None
            middle = len(formulas) // 2
            return self._predict_chunk(formulas[:middle], properties, stop) + self._predict_chunk(
                formulas[middle:], properties, stop
            )
        results = _json(response).get("results")
        if not isinstance(results, list) or len(results) != len(formulas):
            count = len(results) if isinstance(results, list) else "no"
            raise ServiceError(
                response.status_code,
                "unexpected_response",
                f"POST /predict/batch answered {count} results for {len(formulas)} formulas",
            )
        for result, text in zip(results, formulas, strict=True):
            result["formula"] = text  # exactly as the caller gave it
        return results

    # -- screening ---------------------------------------------------------------------------

    @overload
    def screen(
        self,
        chemsys: str | None = None,
        formulas: Iterable[Any] | None = None,
        *,
        wait: Literal[True] = True,
        progress: bool = True,
        poll_interval: float = 2.0,
        **options: Any,
    ) -> pd.DataFrame: ...

    @overload
    def screen(
        self,
        chemsys: str | None = None,
        formulas: Iterable[Any] | None = None,
        *,
        wait: Literal[False],
        progress: bool = True,
        poll_interval: float = 2.0,
        **options: Any,
    ) -> ScreenJob: ...

    def screen(
        self,
        chemsys: str | None = None,
        formulas: Iterable[Any] | None = None,
        *,
        wait: bool = True,
        progress: bool = True,
        poll_interval: float = 2.0,
        **options: Any,
    ) -> pd.DataFrame | ScreenJob:
        """Run a screening job on the service: every composition of ``chemsys`` (``"Li-Fe-O"``) or the
        given ``formulas``, predicted, filtered and ranked there.

        ``options`` are the other fields of POST /screen: ``max_atoms``, ``include_subsystems``,
        ``properties``, ``sort_by``, ``ascending``, ``top_k``, ``filters``, ``max_uncertainty``,
        ``in_domain_only``.

        With ``wait=True`` (default) it waits, with a progress bar of the job's progress, and returns
        the rows (the DataFrame of ``predict`` plus ``index``, each row's input position, and
        ``in_domain``: inside every screened model's training domain) in the
        job's order: ranked when ``sort_by`` was given. ``wait=False`` returns a ``ScreenJob`` at
        once. A refused request (unknown element or property, too large) raises ServiceError.
        """
        if (chemsys is None) == (formulas is None):
            raise ValueError("give exactly one of chemsys (an enumeration) or formulas")
        body: dict[str, Any] = {"chemsys": chemsys} if chemsys is not None else {}
        if formulas is not None:
            body["formulas"] = as_formulas(formulas)
        body.update(options)
        # Not idempotent: a resent POST could queue the job twice, so it is resent only when the
        # service cannot have taken it (no connection, or a 429/503 refusal).
        view = _json(self._request("POST", "/screen", json=body, idempotent=False))
        job = ScreenJob(self, view)
        return job.wait(progress=progress, poll_interval=poll_interval) if wait else job

    def job(self, job_id: str) -> ScreenJob:
        """A handle on an existing screening job (one submitted earlier, from another session)."""
        return ScreenJob(self, self._get_json(f"/screen/{quote(job_id, safe='')}"))

    # -- what the service is -----------------------------------------------------------------

    def models(self) -> pd.DataFrame:
        """One row per served model: property, name, version, unit, provider, architecture, parameter
        count, test-split MAE / RMSE / R² / n and, for ensembles, uncertainty calibration figures.
        ``frame.attrs["skipped"]``: model folders the service did not load, and why."""
        body = self._get_json("/models")
        frame = models_frame(body.get("models") or [])
        frame.attrs["skipped"] = dict(body.get("skipped") or {})
        return frame

    def limits(self) -> dict[str, Any]:
        """GET /limits: max_batch_items, max_formula_length, max_body_bytes, screen_max_compositions,
        screen_max_atoms."""
        return self._get_json("/limits")

    def health(self) -> dict[str, Any]:
        """GET /health: ``{"status": "ok"}`` while the process is alive. A probe: tried once, so a
        service that is down raises ServiceError ``connection_failed`` at once."""
        return self._get_json("/health", retry=_ONCE)

    def ready(self) -> dict[str, Any]:
        """GET /ready: ``status`` is "ready" only when models are loaded and the database answers;
        otherwise the ``reasons``. A 503 is returned, not raised: it is the answer. Tried once."""
        return _json(self._request("GET", "/ready", accept={503}, retry=_ONCE))

    # -- plumbing ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = True,
        accept: Container[int] = (),
        stop: threading.Event | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        return send_with_retries(
            lambda: self._http.request(method, path, **kwargs),
            retry or self.retry,
            idempotent=idempotent,
            accept=accept,
            stop=stop,
        )

    def _get_json(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return _json(self._request("GET", path, **kwargs))

    def _batch_limits(self) -> BatchLimits:
        """The service's batch limits, read once per client (again after a 413 said they changed)."""
        with self._lock:
            if self._limits is not None:
                return self._limits
        try:
            limits: dict[str, Any] | None = self.limits()
        except ServiceError as error:
            if error.status != 404:
                raise
            limits = None  # a service older than GET /limits: its defaults
        found = BatchLimits.from_service(limits)
        with self._lock:
            self._limits = found
        return found

    def _served_properties(self) -> list[str]:
        """Every property the service answers: its models' and the derived ones (e_above_hull)."""
        body = self._get_json("/models")
        return [entry["property"] for entry in [*(body.get("models") or []), *(body.get("derived") or [])]]


class ScreenJob:
    """A screening job on the service (``Client.screen(..., wait=False)`` or ``Client.job(id)``).

    ``wait()`` returns the rows of a succeeded job; for a failed one it raises ServiceError with
    code ``job_failed``, for a cancelled one ``job_cancelled`` (its rows computed before the cancel
    are kept by the service: ``results()`` returns them).
    """

    def __init__(self, client: Client, view: Mapping[str, Any]) -> None:
        self._client = client
        self.id: str = str(view["id"])
        self._view = dict(view)

    def __repr__(self) -> str:
        return f"ScreenJob(id={self.id!r}, status={self._view.get('status')!r})"

    @property
    def _path(self) -> str:
        return f"/screen/{quote(self.id, safe='')}"

    @property
    def properties(self) -> list[str]:
        """The properties this job predicts, in column order. A stability screen's ``p_stable`` and
        ``known`` are fields of ``e_above_hull`` (columns ``p_stable`` and ``known``, as in
        ``predict``), not properties of their own."""
        models = self._view.get("models") or {}
        return [name for name, described in models.items() if "derived_from" not in described]

    def status(self) -> dict[str, Any]:
        """GET /screen/{id}: ``status`` (queued, running, succeeded, failed, cancelled), ``progress``
        ``{"done", "total"}``, ``error``, ``result_count``, timestamps and the request."""
        self._view = self._client._get_json(self._path)
        return self._view

    def results(self) -> pd.DataFrame:
        """Every row so far (all of them once the job succeeded), page by page, in the job's order."""
        rows: list[dict[str, Any]] = []
        # Page by key (next_after: no OFFSET for the service to count); an older service, by offset.
        params: dict[str, Any] = {"offset": 0, "limit": RESULTS_PAGE}
        while True:
            page = self._client._get_json(f"{self._path}/results", params=params)
            batch = page.get("results") or []
            rows.extend(batch)
            if not batch:
                break
            if page.get("next_after") is not None:
                params = {"after": page["next_after"], "limit": RESULTS_PAGE}
            elif "next_after" not in page and page.get("next_offset") is not None:
                params = {"offset": int(page["next_offset"]), "limit": RESULTS_PAGE}
            else:
                break
        return results_frame(rows, self.properties, index=True)

    def cancel(self) -> dict[str, Any]:
        """DELETE /screen/{id}: stop a queued or running job (ServiceError ``job_finished`` if it had
        already ended otherwise); returns its status."""
        self._view = _json(self._client._request("DELETE", self._path))
        return self._view

    def delete(self) -> None:
        """DELETE /screen/{id}?purge=true: remove a stopped job and its rows from the service
        (ServiceError ``job_running`` while it runs: ``cancel()`` it first). The service also
        deletes stopped jobs by itself after its retention period (IBRNET_SCREEN_RETENTION_HOURS)."""
        _json(self._client._request("DELETE", self._path, params={"purge": "true"}))

    def wait(
        self, *, progress: bool = True, poll_interval: float = 2.0, timeout: float | None = None
    ) -> pd.DataFrame:
        """Wait for the job to end, with a progress bar of its ``progress``; its rows as ``results()``.

        Polls quickly at first, then every ``poll_interval`` seconds. Raises ServiceError
        ``job_failed`` / ``job_cancelled``, or TimeoutError after ``timeout`` seconds (the job goes
        on running on the service).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(0.1, poll_interval)
        total = (self._view.get("progress") or {}).get("total")
        with tqdm(
            total=total, unit="formula", desc=f"ibrnet screen {self.id[:8]}", disable=not progress
        ) as bar:
            while True:
                view = self.status()
                done_total = view.get("progress") or {}
                if done_total.get("total") is not None and bar.total != done_total["total"]:
                    bar.total = done_total["total"]
                bar.update(max(0, int(done_total.get("done") or 0) - bar.n))
                state = view.get("status")
                if state == "succeeded":
                    break
                if state == "failed":
                    raise ServiceError(
                        None,
                        "job_failed",
                        f"screening job {self.id} failed: {view.get('error')}",
                        {"job": view},
                    )
                if state == "cancelled":
                    raise ServiceError(
                        None,
                        "job_cancelled",
                        f"screening job {self.id} was cancelled; results() returns the "
                        f"{view.get('result_count', 0)} rows it computed",
                        {"job": view},
                    )
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise TimeoutError(f"screening job {self.id} is still {state} after {timeout} s")
                time.sleep(pause)
                pause = min(poll_interval, pause * 1.5)
        return self.results()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServiceError(
            response.status_code,
            "unexpected_response",
            f"{response.request.method} {response.request.url.path} did not answer a JSON object: "
            f"{response.text[:200]!r}",
        )
    return body
