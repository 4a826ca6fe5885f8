"""The Python client against a service that requires API keys."""

from __future__ import annotations

import pytest

import ibrnet
from tests.server_process import ibrnet_serve


def test_the_client_sends_its_key_and_says_when_it_has_none(models_dir, tmp_path):
    env = {"IBRNET_API_KEYS": "lab-key"}
    with ibrnet_serve(models_dir, f"sqlite:///{tmp_path / 'c.db'}", tmp_path, env=env) as (base, _):
        with ibrnet.Client(base, api_key="lab-key") as client:
            frame = client.predict(["Fe2O3", "Xx2"], progress=False)
            job = client.screen(formulas=["NaCl"], wait=False)
        with ibrnet.Client(base) as anonymous, pytest.raises(ibrnet.ServiceError) as refused:
            anonymous.predict(["Fe2O3"], progress=False)
        with (
            ibrnet.Client(base, api_key="other-key") as stranger,
            pytest.raises(ibrnet.ServiceError) as hidden,
        ):
            stranger.job(job.id).status()
    assert len(frame) == 2 and frame.loc[1, "error_code"] == "unknown_element"
    assert refused.value.status == 401 and refused.value.code == "missing_api_key"
    assert hidden.value.status == 401 and hidden.value.code == "invalid_api_key"
