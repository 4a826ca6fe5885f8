"""The service protocol of ``ibrnet evaluate-stability``, reproduced through a running service.

    python benchmarks/stability_service.py [--models models/]

Writes the CritExam train and validation compounds' DFT formation energies to a CSV, starts
``ibrnet serve`` with ``IBRNET_HULL_REFERENCE`` pointing at it, asks for ``e_above_hull`` (and
``formation_energy_mp``) of every CritExam test compound through ``ibrnet.Client``, and scores the
answers as ``ibrnet evaluate-stability MODEL --protocol service`` does: the figures should agree
(the service computes in float32 where the evaluation uses float64: last digits may differ).
The DFT energy above the same hull comes from the service's own answer: hull = predicted
formation energy - predicted e_above_hull, so DFT above hull = DFT energy - hull.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path

import numpy as np
from serve import Server  # benchmarks/serve.py (this script's folder is on sys.path)

import ibrnet
from app.settings import REPOSITORY_MODELS_DIR
from training.stability import classification, critexam_rows, print_figures


def write_reference(path: Path) -> int:
    rows = [(row["formula"], row["target"]) for split in ("train", "val") for row in critexam_rows(split)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["formula", "formation_energy"])
        writer.writerows(rows)
    return len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPOSITORY_MODELS_DIR)
    args = parser.parse_args()
    test = critexam_rows("test")
    formulas = [row["formula"] for row in test]
    dft = np.array([float(row["target"]) for row in test])
    with tempfile.TemporaryDirectory() as folder:
        reference = Path(folder) / "critexam-train-val.csv"
        print(f"reference: {write_reference(reference):,} train and validation compounds ({reference.name})")
        os.environ["IBRNET_HULL_REFERENCE"] = str(reference)
        server = Server(args.models, f"sqlite:///{folder}/cache.db", Path(folder))
        try:
            with ibrnet.Client(server.base, timeout=600) as client:
                frame = client.predict(formulas, properties=["formation_energy_mp", "e_above_hull"])
        finally:
            server.stop()
    answered = frame["e_above_hull"].notna().to_numpy()
    predicted_ef = frame["formation_energy_mp"].to_numpy(dtype=float)
    above = frame["e_above_hull"].to_numpy(dtype=float)
    p_stable = frame["p_stable"].to_numpy(dtype=float)
    true_above = dft - (predicted_ef - above)
    figures = {
        **classification(true_above[answered], above[answered], p_stable[answered]),
        "formation_energy_mae": float(np.mean(np.abs(predicted_ef[answered] - dft[answered]))),
    }
    print_figures(
        f"service protocol through the service ({len(formulas) - figures['n']} without an answer)", figures
    )
    print(f"  worst decile with >= 200 compounds: {figures['worst_decile_gap']:.3f} from its observed share")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
