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
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from serve import Server  # benchmarks/serve.py (this script's folder is on sys.path)

import ibrnet
from app.settings import REPOSITORY_MODELS_DIR
from training.data import ensure_wheel
from training.stability import EF_MEMBER, classification


def critexam_rows(split: str) -> list[tuple[str, str]]:
    with zipfile.ZipFile(ensure_wheel()) as wheel:
        text = wheel.read(EF_MEMBER.format(split=split)).decode("utf-8")
    return [(row["formula"], row["target"]) for row in csv.DictReader(io.StringIO(text))]


def write_reference(path: Path) -> int:
    rows = critexam_rows("train") + critexam_rows("val")
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
    formulas = [formula for formula, _ in test]
    dft = np.array([float(energy) for _, energy in test])
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
    p_stable = frame["e_above_hull_p_stable"].to_numpy(dtype=float)
    true_above = dft - (predicted_ef - above)
    figures = classification(true_above[answered], above[answered], p_stable[answered])
    print(
        f"service protocol through the service, n {figures['n']} ({len(formulas) - figures['n']} without "
        f"an answer), stable {100 * figures['stable_share']:.1f}%: formation-energy MAE "
        f"{np.mean(np.abs(predicted_ef[answered] - dft[answered])):.4f}, ΔHd MAE {figures['dhd_mae']:.4f} "
        f"eV/atom, accuracy {figures['accuracy']:.3f}, precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f}, F1 {figures['f1']:.3f}, Brier {figures['brier']:.4f}"
    )
    print(f"  worst decile with >= 200 compounds: {figures['worst_decile_gap']:.3f} from its observed share")
    for row in figures["reliability"]:
        print(f"  p_stable {row['bin']}: n {row['n']:6d}, mean p {row['mean_p_stable']:.3f}, "
              f"observed {row['observed_stable']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
