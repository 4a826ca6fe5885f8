"""Fail an image build whose installed distributions are not what its target promises.

The Dockerfile runs it at the end of each target, for example (gpu):

    python check_image_packages.py --require onnxruntime-gpu --forbid onnxruntime torch \
        --provider CUDAExecutionProvider

- ``--forbid onnxruntime`` next to ``--require onnxruntime-gpu``: the two wheels share one module
  and must never be installed together (the CUDA provider silently disappears).
- ``--forbid torch``: serving never needs it, and a stray dependency pulling it adds gigabytes.
- ``--provider``: the execution provider that the installed onnxruntime build must offer. Listing a
  provider needs no GPU; it proves the right build won, not that a GPU is present.

Standard library only (plus onnxruntime when --provider is given).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def problems(require: list[str], forbid: list[str], providers: list[str]) -> list[str]:
    found = [f"required distribution {name!r} is not installed" for name in require if not installed(name)]
    found += [f"forbidden distribution {name!r} is installed" for name in forbid if installed(name)]
    if providers:
        import onnxruntime  # only now: the other checks must work without it

        available = onnxruntime.get_available_providers()
        found += [
            f"onnxruntime offers {available}, not {provider!r}"
            for provider in providers
            if provider not in available
        ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", nargs="*", default=[], metavar="DIST")
    parser.add_argument("--forbid", nargs="*", default=[], metavar="DIST")
    parser.add_argument("--provider", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    found = problems(args.require, args.forbid, args.provider)
    for problem in found:
        print(f"check_image_packages: {problem}", file=sys.stderr)
    if not found:
        print("check_image_packages: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
