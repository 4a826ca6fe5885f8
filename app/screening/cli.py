"""``ibrnet screen``: rank an enumeration or a file of formulas, locally or on a Dask cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from pydantic import ValidationError
from tqdm import tqdm

from app.errors import DomainError
from app.inference.registry import ModelRegistry
from app.screening.dask_runner import ModelSpec, run_screen, seed_models
from app.screening.enumerate import parse_chemsys
from app.screening.io import format_of
from app.screening.sources import FileSource
from app.screening.spec import PropertyFilter, ScreenRequest
from app.screening.submit import prepare_screen
from app.settings import available_cpus, get_settings
from app.stability.assess import E_ABOVE_HULL, SOURCE_PROPERTY, StabilityAssessor
from app.stability.predicted_hull import Candidate, predicted_hull
from app.stability.service import load_stability


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    models_dir = Path(args.models) if args.models else settings.models_dir
    if (args.input is None) == (args.chemsys is None):
        return _fail("give exactly one input: --input FILE or --chemsys SYSTEM")
    try:
        format_of(args.out)
        screen = ScreenRequest(
            chemsys=args.chemsys,
            max_atoms=args.max_atoms,
            include_subsystems=not args.no_subsystems,
            formulas=[] if args.input else None,
            properties=args.properties or None,
            sort_by=args.sort_by,
            ascending=args.ascending,
            top_k=args.top_k,
            filters=parse_filters(args.filter or []),
            max_uncertainty=args.max_uncertainty,
            in_domain_only=args.in_domain_only,
        )
    except ValidationError as error:
        return _fail("; ".join(problem["msg"] for problem in error.errors()))
    except (DomainError, ValueError) as error:
        return _fail(str(error))

    threads = args.threads or _default_threads(args.dask, settings.intra_op_threads)
    registry = ModelRegistry.load(
        models_dir,
        device=settings.device,
        intra_op_threads=threads or settings.intra_op_threads,
        prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
        warmup_rows=64,
    )
    for folder, reason in registry.failures.items():
        print(f"ibrnet screen: skipped model {folder}: {reason}", file=sys.stderr)
    stability = load_stability(settings, registry)
    if args.hull and (args.chemsys is None or stability is None):
        return _fail("--hull needs --chemsys and a formation_energy_mp model (e_above_hull)")
    try:
        source = (
            FileSource(Path(args.input), args.formula_column, settings.max_formula_length)
            if args.input
            else None
        )
        prepared = prepare_screen(
            screen,
            registry,
            max_compositions=sys.maxsize,
            max_formula_length=settings.max_formula_length,
            source=source,
            stability=stability,
        )
    except DomainError as error:
        return _fail(f"{error.code}: {error.message}")

    spec = ModelSpec.of(
        prepared.models,
        models_dir,
        device=settings.device,
        intra_op_threads=threads,
        prefer_int8_on_cpu=settings.prefer_int8_on_cpu,
        max_formula_length=settings.max_formula_length,
        **({"hull_reference": str(settings.hull_reference)} if settings.hull_reference else {}),
    )
    if args.dask is None:
        seed_models(spec, prepared.models)
    with tqdm(
        total=prepared.total, unit="formula", unit_scale=True, disable=args.no_progress, file=sys.stderr
    ) as bar:
        summary = run_screen(
            prepared.source,
            prepared.request,
            spec,
            Path(args.out),
            dask=args.dask,
            partition_size=args.partition_size,
            chunk_size=settings.screen_chunk_size,
            progress=bar.update,
        )
    where = f"on {summary.workers} Dask worker(s)" if args.dask else "locally"
    print(
        f"screened {summary.rows_in:,} formulas {where} in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f}/s); wrote {summary.rows_out:,} rows to {args.out}",
        file=sys.stderr,
    )
    if args.hull:
        assert stability is not None and args.chemsys  # checked before the screen ran
        write_predicted_hull(Path(args.out), Path(args.hull), stability, parse_chemsys(args.chemsys))
    return 0


def write_predicted_hull(
    results: Path, destination: Path, stability: StabilityAssessor, elements: tuple[str, ...]
) -> None:
    """The predicted hull of a finished --chemsys screen, from its results file."""
    frame = pd.read_parquet(results) if results.suffix == ".parquet" else pd.read_csv(results)
    below = frame[frame[E_ABOVE_HULL] < 0]
    candidates = [
        Candidate(
            str(row.composition),
            float(getattr(row, SOURCE_PROPERTY)),
            float(row.e_above_hull),
            float(row.p_stable),
        )
        for row in below.itertuples(index=False)
    ]
    hull = predicted_hull(stability.reference, elements, candidates)
    destination.write_text(json.dumps(hull, indent=2) + "\n", encoding="utf-8")
    print(
        f"predicted hull of {hull['chemsys']}: {len(hull['phases'])} phases -> {destination}", file=sys.stderr
    )


def parse_filters(texts: list[str]) -> dict[str, PropertyFilter]:
    """ "PROPERTY:MIN:MAX[:MAX_UNCERTAINTY]", any bound may be empty: "formation_enthalpy::0"."""
    filters: dict[str, PropertyFilter] = {}
    for text in texts:
        parts = text.split(":")
        if len(parts) not in (3, 4) or not parts[0]:
            raise ValueError(f"--filter {text!r}: expected PROPERTY:MIN:MAX[:MAX_UNCERTAINTY]")
        try:
            bounds = [float(part) if part.strip() else None for part in parts[1:]]
        except ValueError:
            raise ValueError(f"--filter {text!r}: bounds must be numbers or empty") from None
        keys = ("min", "max", "max_uncertainty")
        filters[parts[0]] = PropertyFilter(**dict(zip(keys, bounds, strict=False)))
    return filters


def _default_threads(dask: str | None, service_threads: int) -> int | None:
    """ORT threads per model session: all CPUs locally, a fair share per local worker, and on a
    remote cluster each worker decides from its own CPUs (None)."""
    if dask is None:
        return service_threads
    if dask.startswith("local:"):
        try:
            return max(1, available_cpus() // max(1, int(dask.removeprefix("local:"))))
        except ValueError:
            return 1
    return None


def _fail(message: str) -> int:
    print(f"ibrnet screen: {message}", file=sys.stderr)
    return 2
