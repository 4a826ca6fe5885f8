"""docker-compose.yml against the Compose Specification's JSON schema, and its wiring.

The schema is the one check-jsonschema (PyPI, dev extra) vendors as
check_jsonschema/builtin_schemas/vendor/compose-spec.json, taken from the compose-spec project
(Apache-2.0; the licence ships beside it as vendor/licenses/LICENSE.compose-spec). jsonschema
validates against it; no Docker engine is needed.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for

from app.settings import Settings

from ._paths import COMPOSE_FILE, DOCKERFILE
from .dockerfile_parse import parse as parse_dockerfile

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def schema_validator() -> Draft202012Validator:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    assert schema.get("title") == "Compose Specification"
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML follows YAML merge keys (<<:) as Compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def schema_errors(validator: Draft202012Validator, document: object) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment: the defaults."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def test_compose_file_matches_the_specification(
    schema_validator: Draft202012Validator, compose: dict[str, Any]
) -> None:
    assert schema_errors(schema_validator, compose) == []


def _break_unknown_service_key(document: dict[str, Any]) -> None:
    document["services"]["api"]["imagee"] = "typo"


def _break_depends_on_condition(document: dict[str, Any]) -> None:
    document["services"]["api"]["depends_on"]["postgres"]["condition"] = "service_ready"


def _break_healthcheck_type(document: dict[str, Any]) -> None:
    document["services"]["postgres"]["healthcheck"]["interval"] = 5  # a number, not a duration


def _break_services_shape(document: dict[str, Any]) -> None:
    document["services"] = [document["services"]["api"]]


def _break_device_reservation(document: dict[str, Any]) -> None:
    document["services"]["api-gpu"]["deploy"]["resources"]["reservations"]["devices"] = "all"


@pytest.mark.parametrize(
    "breakage",
    [
        _break_unknown_service_key,
        _break_depends_on_condition,
        _break_healthcheck_type,
        _break_services_shape,
        _break_device_reservation,
    ],
)
def test_broken_compose_files_fail_validation(
    schema_validator: Draft202012Validator, compose: dict[str, Any], breakage: Any
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert schema_errors(schema_validator, broken), f"{breakage.__name__} passed validation"


def test_broken_compose_snippet_fails_validation(schema_validator: Draft202012Validator) -> None:
    snippet = yaml.safe_load(
        """
        services:
          api:
            image: ibrnet-service:cpu
            ports: 8000
            healthcheck:
              test: ["CMD", "true"]
              interval: [30s]
        volumes:
          - pgdata
        """
    )
    errors = schema_errors(schema_validator, snippet)
    assert any(e.startswith("services/api/healthcheck/interval") for e in errors), errors
    assert any(e.startswith("services/api/ports") for e in errors), errors
    assert any(e.startswith("volumes") for e in errors), errors


def test_postgres_service(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume_names = [mount.split(":")[0] for mount in postgres["volumes"]]
    assert volume_names == ["pgdata"] and "pgdata" in compose["volumes"]  # a named volume, declared


@pytest.mark.parametrize("service_name", ["api", "api-gpu"])
def test_api_services_wait_for_postgres_and_point_at_it(compose: dict[str, Any], service_name: str) -> None:
    service = compose["services"][service_name]
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/health" in " ".join(service["healthcheck"]["test"])

    environment = service["environment"]
    url = urlsplit(interpolate(environment["IBRNET_DATABASE_URL"]))
    postgres_env = {k: interpolate(v) for k, v in compose["services"]["postgres"]["environment"].items()}
    assert url.scheme.startswith("postgresql") and url.hostname == "postgres"
    assert url.username == postgres_env["POSTGRES_USER"] and url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres_env["POSTGRES_DB"]

    # Every IBRNET_ variable names a real setting (a typo would be silently ignored by the app).
    fields = set(Settings.model_fields)
    for key in environment:
        assert key.startswith("IBRNET_") and key.removeprefix("IBRNET_").lower() in fields, key
    Settings(**{k.removeprefix("IBRNET_").lower(): interpolate(str(v)) for k, v in environment.items()})


def test_build_targets_exist_in_the_dockerfile(compose: dict[str, Any]) -> None:
    stages = {stage.name for stage in parse_dockerfile(DOCKERFILE).stages}
    assert compose["services"]["api"]["build"]["target"] == "cpu"
    assert compose["services"]["api-gpu"]["build"]["target"] == "gpu"
    for service in compose["services"].values():
        if "build" in service:
            assert service["build"]["target"] in stages


def test_healthcheck_script_is_where_the_images_put_it(compose: dict[str, Any]) -> None:
    dockerfile_text = DOCKERFILE.read_text(encoding="utf-8")
    for name in ("api", "api-gpu"):
        script = compose["services"][name]["healthcheck"]["test"][2]
        assert f"cp /tmp/dist/tools/healthcheck.py {script}" in dockerfile_text


def test_gpu_profile_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "profiles" not in compose["services"]["api"]  # the plain `up` stays CPU-only
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["IBRNET_DEVICE"] == "cuda"
