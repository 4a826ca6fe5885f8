"""One hash of the chemistry code and tables: the parser's key rules and the featurizers.

A cached prediction is a function of the model file *and* of how a formula becomes its key and
its features. The model version covers the first; this covers the second, so a change to a key
rule or an element table after a restart is a cache miss, never a stale answer (the service folds
it into the version under which it caches predictions; training into its feature-cache key).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

CHEMISTRY_DIR = Path(__file__).resolve().parent
_HASHED_SUFFIXES = {".py", ".csv", ".json"}


@cache
def chemistry_fingerprint() -> str:
    """The fingerprint of this installation's app/chemistry (computed once per process)."""
    return fingerprint_of(CHEMISTRY_DIR)


def fingerprint_of(root: Path) -> str:
    """sha256 (first 16 hex digits) of every code and data file under ``root``, by path."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _HASHED_SUFFIXES and "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
