"""Print pyproject.toml's runtime requirements, one per line, leaving out the distributions named.

Why: the gpu container installs ``onnxruntime-gpu`` INSTEAD of ``onnxruntime``. Both ship the
``onnxruntime`` module; installed together, one overwrites the other's files and the CUDA provider
silently disappears. pip has no "install this project's dependencies except X", so the Dockerfile
installs this list plus onnxruntime-gpu, then the project's wheel with ``--no-deps``.

    python scripts/requirements_from_pyproject.py --exclude onnxruntime > requirements.txt

Standard library only: it runs in a bare python image before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# PEP 508: a requirement starts with its distribution name.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalisation, so ``ONNXRuntime`` and ``onnx_runtime`` name the same thing."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a PEP 508 requirement: {requirement!r}")
    return normalize(match.group(1))


def runtime_requirements(pyproject: Path, exclude: set[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = {normalize(name) for name in exclude}
    requirements = list(project.get("dependencies", []))
    missing = wanted - {requirement_name(r) for r in requirements}
    if missing:
        # Excluding something that is not there means the Dockerfile and pyproject drifted apart.
        raise SystemExit(f"--exclude names no dependency of {pyproject}: {', '.join(sorted(missing))}")
    return [r for r in requirements if requirement_name(r) not in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--exclude", nargs="*", default=[], metavar="DIST")
    args = parser.parse_args(argv)
    for requirement in runtime_requirements(args.pyproject, set(args.exclude)):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
