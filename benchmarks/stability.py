"""What stability costs: /predict with and without e_above_hull, and the hull's share of a screen.

    python benchmarks/stability.py --mp-model MODEL_DIR [--formulas 600]

MODEL_DIR is a formation_energy_mp model (trained with ``ibrnet train --data critexam-ef``); the
shipped hull reference is used. From one run on this machine:
1. single-formula POST /predict at concurrency 1, cold (every formula distinct, so both the
   prediction and, mostly, the chemical system's hull are new): the MP model alone and the
   MP model plus e_above_hull, alternated over ROUNDS rounds (a fresh server each round), each
   arm on its own slice of real CritExam test formulas; each round's p50 and p99, the median p50
   of each arm and their ratio (the issue's target: p50 <= 2x). Alternating keeps this machine's
   drift out of the ratio;
2. a 4-element enumeration with max_atoms 12 through the screening code in this process, with
   and without stability, alternated over ROUNDS rounds (a fresh hull cache each round, so
   every round builds the hull): rows per second of each arm's best round, and the share of
   the time the hull takes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server, predict_requests, run_load

from app.inference.registry import ModelRegistry
from app.screening.compute import ScreenModels
from app.screening.enumerate import ChemicalSpace
from app.screening.stoichiometry import StoichiometryEncoder
from app.stability.assess import StabilityAssessor
from app.stability.reference import load_reference
from app.stability.service import source_calibration
from training.stability import EF_MEMBER, critexam

SCREEN_SYSTEM = "Li-Fe-P-O"
SCREEN_MAX_ATOMS = 12
ROUNDS = 3  # each measurement alternates its two arms this many times


def cold_predict(mp_model: Path, formulas: list[str]) -> None:
    arms = (
        ("formation_energy_mp", ["formation_energy_mp"]),
        ("+ e_above_hull", ["formation_energy_mp", "e_above_hull"]),
    )
    slices = np.array_split(np.array(formulas), ROUNDS * len(arms))
    p50s: dict[str, list[float]] = {name: [] for name, _ in arms}
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        shutil.copytree(mp_model, models / mp_model.name)
        for round_number in range(ROUNDS):
            # A fresh server each round: no hull an earlier round built is still cached.
            server = Server(models, f"sqlite:///{folder}/cache-{round_number}.db", Path(folder))
            try:
                for arm, (name, properties) in enumerate(arms):
                    chosen = [str(f) for f in slices[round_number * len(arms) + arm]]
                    field = b'{"properties": %s, "formula"' % json.dumps(properties).encode()
                    requests = [
                        _fix_length(r.replace(b'{"formula"', field)) for r in predict_requests(chosen)
                    ]
                    load = run_load(server, requests, concurrency=1)
                    p50s[name].append(load.percentile_ms(50))
                    print(f"round {round_number + 1}, /predict c=1 cold, {name}: "
                          f"p50 {p50s[name][-1]:.1f} ms, p99 {load.percentile_ms(99):.1f} ms, "
                          f"{load.throughput:.0f} req/s")  # fmt: skip
            finally:
                server.stop()
    alone, with_hull = (float(np.median(p50s[name])) for name, _ in arms)
    print(f"median p50: {alone:.1f} ms without, {with_hull:.1f} ms with e_above_hull; "
          f"with / without: {with_hull / alone:.2f} (target <= 2)")  # fmt: skip


def _fix_length(request: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length")]
    return b"\r\n".join([*lines, f"Content-Length: {len(body)}".encode()]) + b"\r\n\r\n" + body


def screen_share(mp_model: Path) -> None:
    registry = ModelRegistry.load(
        mp_model.parent, device="cpu", intra_op_threads=1, prefer_int8_on_cpu=False, warmup_rows=64
    )
    reference = load_reference()
    space = ChemicalSpace.from_chemsys(SCREEN_SYSTEM, SCREEN_MAX_ATOMS, True, registry.models[0].elements)
    encoder = StoichiometryEncoder(space.elements, SCREEN_MAX_ATOMS)
    chunks = list(space.iter_amounts(0, None, 4096))
    rows = sum(len(chunk) for chunk in chunks)
    calibration = source_calibration(registry)
    timings: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, with_stability in (("without", False), ("with", True)):
            # A fresh assessor each round: every "with" round builds the system's hulls itself.
            stability = StabilityAssessor(reference, calibration=calibration) if with_stability else None
            models = ScreenModels(registry.resolve(["formation_energy_mp"]), stability=stability)
            started = time.perf_counter()
            first = 0
            for chunk in chunks:
                models.predict_amounts(encoder, chunk, first)
                first += len(chunk)
            timings[name] = min(timings.get(name, math.inf), time.perf_counter() - started)
    for name, seconds in timings.items():
        print(f"{SCREEN_SYSTEM} max_atoms {SCREEN_MAX_ATOMS}, {rows:,} rows, {name} e_above_hull: "
              f"best of {ROUNDS} {seconds:.2f} s ({rows / seconds:,.0f} rows/s)")  # fmt: skip
    share = (timings["with"] - timings["without"]) / timings["with"]
    print(f"hull work's share of the screen: {100 * share:.1f}% (each round builds the hulls it needs once)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mp-model", type=Path, required=True)
    parser.add_argument("--formulas", type=int, default=600)
    args = parser.parse_args()
    test = critexam(EF_MEMBER)["test"]
    rng = np.random.default_rng(0)
    formulas = [test.keys[i] for i in rng.choice(len(test.keys), args.formulas, replace=False)]
    cold_predict(args.mp_model, formulas)
    screen_share(args.mp_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
