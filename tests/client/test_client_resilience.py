"""The client rides out what a long predict meets: a restart, a server not up yet, 429/503 with
Retry-After, an answer cut off mid-body; and it gives up, typed, when it should."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ibrnet
from ibrnet import RetryPolicy
from tests.api.harness import oqmd_formulas
from tests.client.helpers import assert_same_frame, batch_requests
from tests.client.scripted_server import scripted_server
from tests.server_process import ibrnet_serve
from tests.tcp_proxy import free_port

# Back-off alone would wait milliseconds: a test that takes seconds shows Retry-After was obeyed.
QUICK = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)


class Background:
    """``call()`` in a thread; its value or exception afterwards."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = call()
            except BaseException as error:
                self.error = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value


def test_a_long_predict_survives_the_server_being_killed_and_restarted(tmp_path: Path, models_dir: Path):
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'ibrnet.db'}"
    env = {"IBRNET_MAX_BATCH_ITEMS": "25"}
    formulas = oqmd_formulas(3000, split="val")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with ibrnet.Client(f"http://127.0.0.1:{port}", concurrency=2) as client:
        with ibrnet_serve(models_dir, database_url, tmp_path / "first", env, port=port) as (base, process):
            running = Background(lambda: client.predict(formulas, progress=False))
            deadline = time.monotonic() + 20
            while batch_requests(base) < 5:  # some of the 120 requests answered, most not yet
                assert time.monotonic() < deadline and running.thread.is_alive()
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert running.thread.is_alive(), "predict ended before the kill: this test proved nothing"
        time.sleep(0.3)  # connections refused for a while
        with ibrnet_serve(models_dir, database_url, tmp_path / "second", env, port=port) as (base, _):
            frame = running.result(timeout=60)
            resumed = batch_requests(base)
    assert resumed >= 1  # the second server answered the rest
    assert frame["formula"].tolist() == formulas
    assert frame["error_code"].isna().all()
    assert_same_frame(frame, ibrnet.predict(formulas, models_dir=models_dir))


def test_a_server_not_up_yet_is_waited_for(tmp_path: Path, models_dir: Path):
    port = free_port()
    formulas = oqmd_formulas(100, offset=1000)
    # Waits of 0.1-1 s: the default's (up to 10 s) would make this test slow, not more telling.
    with ibrnet.Client(
        f"http://127.0.0.1:{port}", retry=RetryPolicy(base_delay=0.2, max_delay=1.0)
    ) as client:
        running = Background(lambda: client.predict(formulas, progress=False))
        time.sleep(1.0)
        assert running.thread.is_alive()  # refused, retrying
        with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'ibrnet.db'}", tmp_path, port=port):
            frame = running.result(timeout=60)
    assert_same_frame(frame, ibrnet.predict(formulas, models_dir=models_dir))


def test_nobody_listening_is_a_typed_error_once_the_retries_are_spent():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with (
        ibrnet.Client(url, retry=RetryPolicy(attempts=3, base_delay=0.01)) as client,
        pytest.raises(ibrnet.ServiceError) as failed,
    ):
        client.predict(["Fe2O3"], progress=False)
    assert failed.value.status is None and failed.value.code == "connection_failed"
    assert failed.value.details["attempts"] == 3 and url in failed.value.message
    assert time.monotonic() - started < 5
    # A probe is tried once, whatever the budget: it reports the service's state now.
    with ibrnet.Client(url) as client, pytest.raises(ibrnet.ServiceError) as probe:
        client.health()
    assert probe.value.details["attempts"] == 1


def test_429_and_503_are_retried_after_their_retry_after_and_the_api_key_goes_with_every_call(
    server: str, models_dir: Path
):
    formulas = ["Fe2O3", "Xx2", "LiFePO4"]
    with scripted_server(server, [(503, "1"), (429, "1")]) as scripted:
        started = time.monotonic()
        with ibrnet.Client(scripted.url, api_key="secret-key", retry=QUICK) as client:
            frame = client.predict(formulas, progress=False)
        elapsed = time.monotonic() - started
    assert elapsed >= 2.0, elapsed
    assert_same_frame(frame, ibrnet.predict(formulas, models_dir=models_dir))
    batches = [request for request in scripted.requests if request[1] == "/predict/batch"]
    assert len(batches) == 3
    assert [request[1] for request in scripted.requests] == ["/limits", *["/predict/batch"] * 3]
    assert all(headers.get("x-api-key") == "secret-key" for _, _, headers in scripted.requests)


def test_an_answer_cut_off_mid_body_or_never_coming_is_asked_again(server: str, models_dir: Path):
    formulas = oqmd_formulas(30, offset=2000)
    with (
        scripted_server(server, ["truncate", "stall", "truncate"]) as scripted,
        ibrnet.Client(scripted.url, retry=QUICK, timeout=0.5) as client,
    ):
        frame = client.predict(formulas, progress=False)
    assert sum(request[1] == "/predict/batch" for request in scripted.requests) == 4
    assert_same_frame(frame, ibrnet.predict(formulas, models_dir=models_dir))


def test_a_retry_after_beyond_the_policy_is_not_waited_for(server: str):
    with (
        scripted_server(server, [(429, "3600")]) as scripted,
        ibrnet.Client(scripted.url, retry=QUICK) as client,
    ):
        started = time.monotonic()
        with pytest.raises(ibrnet.ServiceError) as refused:
            client.predict(["Fe2O3"], progress=False)
    assert time.monotonic() - started < 2
    assert (refused.value.status, refused.value.code) == (429, "overloaded")
    assert refused.value.details["retry_after"] == 3600


def test_the_budget_runs_out_on_a_service_that_keeps_refusing(server: str):
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
    with (
        scripted_server(server, [(503, None)] * 5) as scripted,
        ibrnet.Client(scripted.url, retry=policy) as client,
        pytest.raises(ibrnet.ServiceError) as refused,
    ):
        client.predict(["Fe2O3"], progress=False)
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    assert sum(request[1] == "/predict/batch" for request in scripted.requests) == 3
